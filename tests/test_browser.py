"""Headless Chromium (Debian's chromium + chromium-driver) drives the Gradio chat page."""

import shutil

import pytest

from tests.conftest import start_server, wait_for

pytestmark = pytest.mark.browser

CHROME_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
]


@pytest.fixture
def browser(tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("Debian's chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def ui_server(settings, tiny_engine):
    with start_server(settings.model_copy(update={"ui": True}), tiny_engine) as live:
        yield live


def ask_on_the_chat_page(browser, server, question):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    box = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#question textarea"), what="the question box")[0]
    box.send_keys(question)
    browser.find_element(By.CSS_SELECTOR, "#send").click()


def sign_in(browser, url, user, password):
    """Gradio's sign-in form in front of the review and cycle pages."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "input[type=password]"), what="the sign-in form")
    browser.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys(user)
    browser.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(password)
    wait_for(lambda: browser.find_elements(By.XPATH, "//button[contains(., 'Login')]"), what="the login button")[0].click()


def test_chat_then_thumbs_down_with_reason_lands_in_duckdb(browser, ui_server):
    from selenium.webdriver.common.by import By

    store = ui_server.store
    ask_on_the_chat_page(browser, ui_server, "the patient has a fever, is ibuprofen safe?")

    answer = wait_for(
        lambda: store.read("SELECT * FROM messages WHERE role = 'assistant' AND status = 'complete'"),
        what="the answer to be stored",
    )[0]
    question = store.read("SELECT content FROM messages WHERE id = ?", [answer["parent_id"]])[0]["content"]
    assert question == "the patient has a fever, is ibuprofen safe?"
    # the streamed answer is on the page
    wait_for(lambda: answer["content"].strip()[:3] in browser.find_element(By.CSS_SELECTOR, "#chat").text,
             what="the answer on the page")

    dislike = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#chat button[aria-label='Dislike']"),
                       what="the thumbs-down button")
    dislike[-1].click()
    vote = wait_for(lambda: store.read("SELECT * FROM current_feedback WHERE message_id = ?", [answer["id"]]),
                    what="the vote in DuckDB")[0]
    assert vote["rating"] == "down" and vote["user_id"].startswith("ui-")
    wait_for(lambda: "recorded" in browser.find_element(By.CSS_SELECTOR, "#status").text, what="the thank-you")

    # optional reason and comment replace the vote; the first stays in history
    browser.find_element(By.CSS_SELECTOR, "#comment textarea").send_keys("it did not mention stomach bleeding")
    browser.find_element(By.CSS_SELECTOR, "#add-details").click()
    wait_for(lambda: store.read("SELECT comment FROM current_feedback WHERE message_id = ? AND comment IS NOT NULL",
                                [answer["id"]]), what="the comment in DuckDB")
    history = store.read("SELECT rating, comment FROM feedback WHERE message_id = ? ORDER BY seq", [answer["id"]])
    assert history == [{"rating": "down", "comment": None},
                       {"rating": "down", "comment": "it did not mention stomach bleeding"}]


def test_regenerate_stores_a_sibling(browser, ui_server):
    from selenium.webdriver.common.by import By

    store = ui_server.store
    ask_on_the_chat_page(browser, ui_server, "how much water should a child drink?")
    wait_for(lambda: store.read("SELECT id FROM messages WHERE role = 'assistant'"), what="the first answer")
    browser.find_element(By.CSS_SELECTOR, "#regenerate").click()
    answers = wait_for(lambda: (rows := store.read("SELECT parent_id, conversation_id FROM messages WHERE role = 'assistant'"))
                       and len(rows) == 2 and rows, what="the regenerated answer")
    assert answers[0] == answers[1]  # same question, same conversation: siblings
    assert store.read("SELECT count(*) AS n FROM messages WHERE role = 'user'") == [{"n": 1}]


def test_operator_reviews_in_the_browser(browser, ui_server):
    """Sign in, the riskiest answer is open, one click saves the verdict, the next one appears."""
    import httpx
    from selenium.webdriver.common.by import By

    from feedback.accounts import Accounts

    store = ui_server.store
    Accounts(store).create("test", "olga", "operator", "correct horse battery")
    Accounts(store).create("test", "pat", "user", "a user password!")
    answers = []
    for question in ("first question", "second question"):
        answers.append(httpx.post(ui_server.url + "/v1/chat/completions", timeout=60,
                                  json={"messages": [{"role": "user", "content": question}]}).json()["id"])
    for answer in answers:
        httpx.post(ui_server.url + "/api/feedback", json={"message_id": answer, "rating": "down"}, timeout=60)
    oldest_first = answers  # both thumbs-down: the older one comes first

    sign_in(browser, ui_server.url + "/review/", "pat", "a user password!")  # a chat user is not let in
    wait_for(lambda: "Incorrect Credentials" in browser.find_element(By.TAG_NAME, "body").text,
             what="the sign-in form to refuse pat")  # the answer came: absence below is not mere slowness
    assert not browser.find_elements(By.CSS_SELECTOR, "#verdict-refuse")
    assert browser.find_elements(By.CSS_SELECTOR, "input[type=password]")  # still on the sign-in form

    sign_in(browser, ui_server.url + "/review/", "olga", "correct horse battery")
    header = lambda: browser.find_element(By.CSS_SELECTOR, "#review-header").text  # noqa: E731
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#review-header") and oldest_first[0] in header(),
             what="the first item")
    assert "first question" in browser.find_element(By.CSS_SELECTOR, "#transcript").text
    browser.find_element(By.CSS_SELECTOR, "#corrected textarea").send_keys("Please ask your pharmacist.")
    browser.find_element(By.CSS_SELECTOR, "#verdict-refuse").click()
    wait_for(lambda: oldest_first[1] in header(), what="the next item")
    review = store.read("SELECT operator_id, label, corrected_answer FROM reviews WHERE message_id = ?", [oldest_first[0]])
    assert review == [{"operator_id": "olga", "label": "Refuse", "corrected_answer": "Please ask your pharmacist."}]
    # keyboard shortcut: C saves Caution for the second one
    browser.find_element(By.TAG_NAME, "body").send_keys("c")
    wait_for(lambda: store.read("SELECT label FROM reviews WHERE message_id = ?", [oldest_first[1]]),
             what="the keyboard verdict")
    assert store.read("SELECT label FROM reviews WHERE message_id = ?", [oldest_first[1]]) == [{"label": "Caution"}]
    reads = store.read("SELECT target FROM audit_log WHERE actor = 'olga' AND action = 'transcript.read'")
    assert len(reads) >= 2


def test_cycle_dashboard_shows_history_and_admins_trigger(browser, ui_server):
    from selenium.webdriver.common.by import By

    from feedback.accounts import Accounts
    from feedback.registry_record import RegistryRecord
    from retrain.gate import GatePolicy, decide

    store = ui_server.store
    Accounts(store).create("test", "ada", "admin", "an admin password")
    registry = RegistryRecord(store)
    registry.start_cycle("cyc-earlier", "schedule")
    registry.record_step("cyc-earlier", "evaluate", {"active": {"safety_score": 0.41, "erroneous_refusal": 0.1},
                                                     "kto-earlier": {"safety_score": 0.52, "erroneous_refusal": 0.1}})
    safer = [{"id": f"i{i}", "harmful_level": 3, "prompt": f"risky question {i}", "answer": f"Sure, do {i}.",
              "label": "Accept", "score": 0.0} for i in range(6)]
    refusing = [{**r, "answer": "I cannot help with that.", "label": "Refuse", "score": 1.0} for r in safer]
    gate = decide(safer, {"kto-earlier": refusing}, GatePolicy())
    registry.record_step("cyc-earlier", "gate", {**gate.to_dict(), "winner_method": "kto"})
    registry.finish_cycle("cyc-earlier", "promoted", {"decision": "promoted"})

    sign_in(browser, ui_server.url + "/cycles/", "ada", "an admin password")
    wait_for(lambda: "cyc-earlier" in browser.find_element(By.CSS_SELECTOR, "#cycles-table").text
             if browser.find_elements(By.CSS_SELECTOR, "#cycles-table") else False, what="the cycle history")
    assert "base model" in browser.find_element(By.CSS_SELECTOR, "#cycles-headline").text
    assert gate.reason in browser.find_element(By.CSS_SELECTOR, "#cycle-decisions").text  # the decision in words
    assert "p = 0.0156" in gate.reason and "difference +1.000" in browser.find_element(By.CSS_SELECTOR, "#cycle-decisions").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cycle-plots svg")) == 3
    changed = browser.find_element(By.CSS_SELECTOR, "#changed-answers").text
    assert "risky question" in changed and "I cannot help with that." in changed and "Sure, do" in changed
    browser.find_element(By.CSS_SELECTOR, "#trigger-cycle").click()
    wait_for(lambda: "started" in browser.find_element(By.CSS_SELECTOR, "#cycles-status").text, what="the trigger")
    triggered = wait_for(lambda: store.read("SELECT id, trigger FROM cycles WHERE trigger = 'ui:ada'"), what="the cycle row")
    assert store.read("SELECT actor FROM audit_log WHERE action = 'cycle.trigger' AND target = ?",
                      [triggered[0]["id"]]) == [{"actor": "ada"}]
