"""`blsp-emo serve`: the Gradio chat app. Fast tests call its handlers; the `integration` test starts
the server on 127.0.0.1 and drives Debian's headless Chromium through Selenium
(`apt-get install chromium chromium-driver`, `pip install gradio selenium`).

Screenshots go to `$BLSP_EMO_TEST_ARTIFACTS` when set, else to the test's temporary folder.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import soundfile

from trainers.inference.chat import BlspEmoChat

from tiny_models import random_clip, tiny_model, voice_like

pytest.importorskip("gradio")

from trainers.inference.web_app import ChatApp, free_port  # noqa: E402  (needs gradio)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def app(processor) -> ChatApp:
    model = tiny_model()
    return ChatApp(lambda: BlspEmoChat(model, processor, max_new_tokens=4, max_audio_seconds=2))


def last(outputs: list[tuple]) -> tuple:
    return outputs[-1]


def test_a_spoken_turn_streams_the_reply_and_shows_the_emotion(app, tmp_path):
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, voice_like(1.0, 1), 16000)
    outputs = list(app.respond("hello world", str(clip), False, [], None))
    history, chat, _, _, emotion, status = last(outputs)
    assert [message["role"] for message in history] == ["user", "assistant"]
    assert history[1]["content"] == chat.turns[0].reply
    assert "hello world" in history[0]["content"] and f"emotion: **{chat.turns[0].emotion}**" in history[0]["content"]
    assert emotion == chat.turns[0].scores
    assert status.startswith("reply in")
    assert len(outputs) > 2  # streamed: the reply grows over several updates


def test_bad_input_shows_a_message_and_the_session_keeps_working(app, tmp_path):
    (tmp_path / "notes.wav").write_text("not audio")
    soundfile.write(tmp_path / "long.wav", random_clip(48000, 1), 16000)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    history, chat = [], None
    for text, audio, message in [
        ("", None, "nothing to send"),
        ("", str(tmp_path / "empty.wav"), "audio is empty"),
        ("", str(tmp_path / "notes.wav"), "notes.wav: could not decode audio"),
        ("", str(tmp_path / "long.wav"), "3 s of audio is over the limit of 2 s"),
    ]:
        history, chat, _, audio_output, _, status = last(list(app.respond(text, audio, False, history, chat)))
        assert status.startswith("⚠️") and message in status
        assert history == [] and audio_output is None  # nothing added; the bad audio is cleared
    history, chat, *_, status = last(list(app.respond("good day", None, True, history, chat)))
    assert status.startswith("reply in") and len(history) == 2 and chat.empathetic


def test_a_failed_generation_is_reported_and_the_turn_can_be_sent_again(app, monkeypatch):
    history, chat, *_ = last(list(app.respond("hello world", None, False, [], None)))
    monkeypatch.setattr(chat.model, "generate", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("out of memory")))
    failed, chat, text, *_, status = last(list(app.respond("good day", None, False, history, chat)))
    assert status == "⚠️ **Generation failed:** out of memory"
    assert failed == history and text == "good day"
    monkeypatch.undo()
    history, chat, *_, status = last(list(app.respond(text, None, False, failed, chat)))
    assert status.startswith("reply in") and len(history) == 4 and len(chat.turns) == 2


def test_new_conversation_clears_the_chat(app):
    history, chat, *_ = last(list(app.respond("hello world", None, False, [], None)))
    history, chat, *_ = app.clear(chat)
    assert history == [] and chat.turns == [] and chat.token_ids == []


# End to end in a browser.


def browser(profile: Path, microphone: Path):
    """Headless Debian Chromium under Selenium: a fresh profile, no background traffic, a fake
    microphone that plays the wav file `microphone` and needs no permission prompt."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server",
        f"--user-data-dir={profile}", "--window-size=1280,1000",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {seconds} s:\n{log.read_text()[-3000:]}")


def requested_urls(driver) -> list[str]:
    """Every URL the page has requested so far (from Chromium's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("BLSP_EMO_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.integration
def test_browser_chat_with_an_uploaded_wav_and_bad_input(saved_checkpoint, tmp_path, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "server.log"
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    command = [
        sys.executable, "-m", "trainers.cli", "serve", "--model", str(saved_checkpoint), "--port", str(port),
        "--max-new-tokens", "6", "--max-audio-seconds", "5",
    ]  # fmt: skip
    files = {
        "clip.wav": lambda path: soundfile.write(path, voice_like(2.0, 1), 16000),  # passes the speech check
        "empty.wav": lambda path: soundfile.write(path, np.zeros(0, np.float32), 16000),
        "long.wav": lambda path: soundfile.write(path, random_clip(16000 * 8, 2), 16000),
        "fake.wav": lambda path: path.write_text("this is text, not audio"),
        "notes.txt": lambda path: path.write_text("this is text, not audio"),
        # The fake microphone plays silence, so a recording is silent however long the loaded machine takes
        # between start and stop (Chromium's default beep made that a race).
        "microphone.wav": lambda path: soundfile.write(path, np.zeros(48000, np.int16), 48000, subtype="PCM_16"),
    }
    for name, write in files.items():
        write(tmp_path / name)

    with open(log, "w") as log_file:
        server = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
    driver = None
    try:
        wait_until_serving(url, server, log)
        driver = browser(tmp_path / "chromium-profile", tmp_path / "microphone.wav")
        wait = WebDriverWait(driver, 60)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.ID, "send"))

        def click(selector: str) -> None:
            # Gradio shows and enables its buttons asynchronously (more slowly on a loaded machine): wait first.
            wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, selector))).click()

        def status() -> str:
            return driver.find_element(By.ID, "status").text

        def send_and_wait_for(expected: str) -> str:
            previous = status()
            click("#send")
            wait.until(lambda d: status() != previous and expected in status())
            return status()

        def upload(name: str) -> None:
            click("#audio_input button[aria-label='Upload file']")
            driver.find_element(By.CSS_SELECTOR, "#audio_input input[type=file]").send_keys(str(tmp_path / name))

        def upload_and_wait(name: str) -> None:
            upload(name)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio_input button[aria-label='Clear']"))

        # Bad input first: each shows a clear message and leaves the session usable.
        assert "nothing to send" in send_and_wait_for("⚠️")
        upload("notes.txt")  # Gradio's own check refuses a non-audio file type
        wait.until(lambda d: any("Invalid file type" in toast.text for toast in d.find_elements(By.CSS_SELECTOR, ".toast-body")))
        click("button.toast-close")
        upload_and_wait("fake.wav")  # an audio name on something else
        assert "fake.wav: could not decode audio" in send_and_wait_for("⚠️")
        upload_and_wait("empty.wav")
        assert "empty.wav: audio is empty" in send_and_wait_for("⚠️")
        upload_and_wait("long.wav")
        assert "long.wav: 8 s of audio is over the limit of 5 s" in send_and_wait_for("⚠️")
        # A silent recording: start and stop the (fake, silent) microphone.
        click("#audio_input button[aria-label='Record audio']")
        click("#audio_input button.record-button")
        click("#audio_input button.stop-button")  # shown once the (fake) microphone has started
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio_input button[aria-label='Clear']"))
        assert "the recording is empty or silent" in send_and_wait_for("⚠️")
        driver.save_screenshot(str(artifacts / "web_app_bad_input.png"))

        # A spoken turn from an uploaded wav: a streamed reply and the emotion head's label.
        upload_and_wait("clip.wav")
        send_and_wait_for("reply in")
        replies = [element.text for element in driver.find_elements(By.CSS_SELECTOR, "#chatbot .message.bot")]
        assert len(replies) == 1 and replies[0].strip()
        emotion = driver.find_element(By.CSS_SELECTOR, "#emotion [data-testid='label-output-value']").text
        labels = json.loads((saved_checkpoint / "config.json").read_text())["id2label"].values()
        assert emotion in labels
        assert f"emotion: {emotion}" in driver.find_element(By.CSS_SELECTOR, "#chatbot .message.user").text

        # A text turn continues the same conversation from its cache.
        driver.find_element(By.CSS_SELECTOR, "#text_input textarea").send_keys("good day")
        assert "continued from the cache" in send_and_wait_for("reply in")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#chatbot .message.bot")) == 2
        driver.save_screenshot(str(artifacts / "web_app_chat.png"))

        # Offline: the page asked nothing of any host but the app's own.
        outside = [
            address for address in requested_urls(driver)
            if urlparse(address).scheme in ("http", "https", "ws", "wss") and urlparse(address).hostname != "127.0.0.1"
        ]  # fmt: skip
        assert outside == []
    except Exception:
        if driver is not None:
            driver.save_screenshot(str(artifacts / "web_app_failure.png"))
        raise
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    if os.environ.get("BLSP_EMO_TEST_ARTIFACTS") is None:
        shutil.copy(log, artifacts / "server.log")
