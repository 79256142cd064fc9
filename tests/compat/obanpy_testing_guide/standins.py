# Stand-ins for the application code that Oban.py's docs/testing.md takes for granted (a User
# model, a web app, a business module, an email outbox). The examples themselves, in the
# test_*.py files next to this one, are copied from the docs unchanged.
import asyncio
import itertools

sent_emails = []
_ids = itertools.count(1)


class User:
    _by_id = {}

    def __init__(self, email):
        self.id = next(_ids)
        self.email = email
        self.active = False

    @classmethod
    async def create(cls, email):
        user = cls(email)
        cls._by_id[user.id] = user
        return user

    @classmethod
    async def activate(cls, user_id):
        user = cls._by_id[user_id]
        user.active = True
        return user


class NotificationService:
    sent = []

    @classmethod
    async def send(cls, user_id, message):
        cls.sent.append((user_id, message))


class Response:
    def __init__(self, status_code):
        self.status_code = status_code


class App:
    """A web app whose /signup enqueues an ActivationWorker job for a valid email."""

    async def post(self, path, json):
        from test_integration import ActivationWorker

        if "@" not in json["email"]:
            return Response(400)
        await ActivationWorker.enqueue({"email": json["email"]})
        return Response(201)


class Owner:
    def __init__(self, email, name):
        self.email = email
        self.name = name


class Account_:
    def __init__(self, owners):
        self.owners = owners


account = Account_([Owner("foo@example.com", "Foo")])
account_with_3_owners = Account_(
    [Owner(f"owner{n}@example.com", f"Owner {n}") for n in range(3)]
)


class Account:
    @staticmethod
    async def notify_owners(account):
        from test_integration import NotificationWorker

        for owner in account.owners:
            await NotificationWorker.enqueue({"email": owner.email, "name": owner.name})


class Business:
    @staticmethod
    async def schedule_meeting(params):
        from test_integration import MeetingMailer

        await MeetingMailer.enqueue({"email": params["email"]})


async def trigger_background_process():
    """Enqueues a ProcessWorker job from a task of its own, which runs after this returns."""
    from test_integration import ProcessWorker

    async def later():
        await ProcessWorker.enqueue({})

    task = asyncio.get_running_loop().create_task(later())
    _background.add(task)
    task.add_done_callback(_background.discard)


_background = set()
