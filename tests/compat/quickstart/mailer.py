# The function worker of Oban.py's docs/quickstart.md ("Function Workers"), copied unchanged
# between the marked lines. Its print reaches the output of the node that runs it.

# ---- Oban.py docs/quickstart.md, "Function Workers" (unchanged) ---------------------------
from oban import job

@job(queue="default")
def send_email(email, subject, body):
    print("Sending an email...")
# ---- end of the copy -----------------------------------------------------------------------
