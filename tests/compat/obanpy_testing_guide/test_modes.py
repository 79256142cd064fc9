# Oban.py docs/testing.md, "Testing Modes", run on oban_pro through the `oban` shim.
from oban import job


@job(queue="default")
async def send_email(to, subject):  # stand-in: the function worker the example enqueues
    return None


# ---- docs/testing.md, "Testing Modes" (unchanged) ------------------------------------------
import oban.testing

async def test_with_inline_mode():
    with oban.testing.mode("inline"):
        # Job executes immediately without hitting the database
        result = await send_email.enqueue("user@example.com", "Hello")
        assert result.state == "completed"
# ---- end of the copy -----------------------------------------------------------------------


async def test_inline_mode_wrote_nothing():
    with oban.testing.mode("inline"):
        await send_email.enqueue("user@example.com", "Hello")
    assert await oban.testing.all_enqueued() == []
