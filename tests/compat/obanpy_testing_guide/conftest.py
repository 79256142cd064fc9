# Oban.py docs/testing.md, run on oban_pro through the test-only `oban` shim.
import pytest

# ---- docs/testing.md, "Test Configuration" (unchanged) -------------------------------------
import pytest
from oban import Oban

@pytest.fixture
async def oban():
    pool = await Oban.create_pool()
    oban = Oban(pool=pool)

    async with oban:
        yield oban

    await pool.close()
# ---- end of the copy -----------------------------------------------------------------------


# Stand-in for "your app will initialize Oban when it boots": every test has the instance.
@pytest.fixture(autouse=True)
async def _app_boot(oban):
    yield


@pytest.fixture
def app():
    from standins import App

    return App()


# ---- docs/testing.md, "Resetting Between Tests" (unchanged) --------------------------------
import pytest
from oban.testing import reset_oban

@pytest.fixture(autouse=True)
async def _reset_oban():
    yield

    await reset_oban()
# ---- end of the copy -----------------------------------------------------------------------
