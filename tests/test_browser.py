"""The edge's web page in headless Chromium, against a real two-region mesh."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.http_client import region_http_url
from topology.launcher import Mesh

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
# A move to another region: a missed pong (up to 7 s) plus backoff, or two
# healthy probes 2 s apart (failback).
FAILOVER_MS = 30_000


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}. Install it with "
            "`apt-get update && apt-get install -y chromium` (as root); "
            "`make test` does this through its browser prerequisite."
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


async def open_page(browser: Browser, url: str, errors: list[str]) -> Page:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url)
    return page


async def sign_in(page: Page, user: str) -> None:
    await page.fill("#user-name", user)
    await page.click("#sign-in")
    await expect(page.locator("#status")).to_have_attribute(
        "data-state", "online", timeout=TIMEOUT_MS
    )


async def send(page: Page, to: str, text: str) -> None:
    await page.fill("#to", to)
    await page.fill("#message", text)
    await page.click("#send")


async def shown_texts(page: Page, conversation: str) -> list[str]:
    await page.click(f'#conversations li[data-conversation="{conversation}"]')
    return await page.locator("#messages li[data-seq] .content").all_text_contents()


async def test_two_pages_chat_and_reload(mesh: Mesh, browser: Browser) -> None:
    errors: list[str] = []
    alice = await open_page(browser, region_http_url(mesh, "eu-west"), errors)
    bob = await open_page(browser, region_http_url(mesh, "us-east"), errors)
    await sign_in(alice, "alice")
    await sign_in(bob, "bob")
    hello, reply = unique("hello"), unique("reply")
    history = bob.locator("#messages li[data-seq] .content")

    await send(alice, "bob", hello)
    await bob.click('#conversations li[data-conversation="dm:alice:bob"]')
    await expect(history.last).to_have_text(hello, timeout=TIMEOUT_MS)
    await send(bob, "alice", reply)
    await expect(alice.locator("#messages li[data-seq] .content").last).to_have_text(
        reply, timeout=TIMEOUT_MS
    )
    before = await shown_texts(bob, "dm:alice:bob")

    await bob.reload()
    await expect(bob.locator("#status")).to_have_attribute(
        "data-state", "online", timeout=TIMEOUT_MS
    )
    await expect(
        bob.locator('#conversations li[data-conversation="dm:alice:bob"]')
    ).to_be_visible()
    await bob.click('#conversations li[data-conversation="dm:alice:bob"]')
    await expect(history).to_have_count(len(before), timeout=TIMEOUT_MS)
    after = await shown_texts(bob, "dm:alice:bob")

    assert before[-2:] == [hello, reply]
    assert after == before
    assert await bob.locator("#me").text_content() == "bob"
    assert await alice.locator("#chat-view").is_visible()
    assert not await alice.locator("#sign-in-view").is_visible()
    assert errors == []


async def test_page_resumes_after_connection_drop(mesh: Mesh, browser: Browser) -> None:
    errors: list[str] = []
    alice = await open_page(browser, region_http_url(mesh, "eu-west"), errors)
    bob = await open_page(browser, region_http_url(mesh, "us-east"), errors)
    await sign_in(alice, "alice")
    await sign_in(bob, "bob")
    await bob.click('#conversations li[data-conversation="dm:alice:bob"]')
    history = bob.locator("#messages li[data-seq] .content")
    before = await history.all_text_contents()
    missed = [unique("while-away-1"), unique("while-away-2")]

    # Drop bob's socket without signing out; the page reconnects by itself
    # and syncs from the cursors it kept.
    sockets: list[str] = []
    bob.on("websocket", lambda socket: sockets.append(socket.url))
    await bob.evaluate("state.socket.close(4000, 'test drops the connection')")
    for text in missed:
        await send(alice, "bob", text)
    await expect(history).to_have_count(len(before) + 2, timeout=TIMEOUT_MS)
    await expect(bob.locator("#status")).to_have_attribute("data-state", "online")

    assert len(sockets) == 1, "the page should have opened one new WebSocket"
    assert await history.all_text_contents() == [*before, *missed]
    assert errors == []


async def expect_region(page: Page, region: str) -> None:
    status = page.locator("#status")
    await expect(status).to_have_attribute("data-region", region, timeout=FAILOVER_MS)
    await expect(status).to_have_attribute("data-state", "online")


async def test_page_fails_over_to_next_region_and_back(
    fresh_mesh: Mesh, browser: Browser
) -> None:
    errors: list[str] = []
    alice = await open_page(browser, region_http_url(fresh_mesh, "eu-west"), errors)
    bob = await open_page(browser, region_http_url(fresh_mesh, "us-east"), errors)
    await sign_in(alice, "alice")
    await sign_in(bob, "bob")
    await expect_region(alice, "eu-west")
    edge = fresh_mesh.processes["edge-eu-west-1"]
    assert edge.pid is not None
    texts = {
        name: unique(name)
        for name in ("before", "frozen", "killed-1", "killed-2", "after")
    }

    await send(alice, "bob", texts["before"])
    await bob.click('#conversations li[data-conversation="dm:alice:bob"]')
    history = bob.locator("#messages li[data-seq] .content")
    await expect(history.last).to_have_text(texts["before"], timeout=TIMEOUT_MS)

    # A frozen edge keeps the socket open but sends nothing: the page
    # misses a pong, moves to us-east and sends the message there again.
    os.kill(edge.pid, signal.SIGSTOP)
    try:
        await send(alice, "bob", texts["frozen"])
        await expect_region(alice, "us-east")
        await expect(history.last).to_have_text(texts["frozen"], timeout=TIMEOUT_MS)
    finally:
        # The edge then reads the first copy of the message from its socket
        # and passes it on: the store must keep one.
        os.kill(edge.pid, signal.SIGCONT)
    await expect_region(alice, "eu-west")

    # A dead edge closes the socket: the page moves at once, and messages
    # written while no region is connected wait and go out in order.
    edge.kill()
    await send(alice, "bob", texts["killed-1"])
    await send(alice, "bob", texts["killed-2"])
    await expect_region(alice, "us-east")
    await expect(history.last).to_have_text(texts["killed-2"], timeout=TIMEOUT_MS)
    edge.start()
    await edge.wait_healthy(30)
    await expect_region(alice, "eu-west")
    await send(alice, "bob", texts["after"])
    await expect(history.last).to_have_text(texts["after"], timeout=TIMEOUT_MS)

    sent = list(texts.values())
    moves = await alice.evaluate("state.moves")
    assert [m["reason"] for m in moves][:3] == ["start", "no pong", "failback"]
    assert moves[4]["reason"] == "failback"
    assert [m["to"] for m in moves] == [
        "eu-west",
        "us-east",
        "eu-west",
        "us-east",
        "eu-west",
    ]
    assert moves[3]["reason"].startswith("closed with code")
    assert await shown_texts(bob, "dm:alice:bob") == sent
    await expect(alice.locator("#messages li.pending")).to_have_count(0)
    assert await shown_texts(alice, "dm:alice:bob") == sent
    assert errors == []


async def test_page_keeps_order_through_rate_limit(
    mesh: Mesh, browser: Browser
) -> None:
    errors: list[str] = []
    carol = await open_page(browser, region_http_url(mesh, "eu-west"), errors)
    dave = await open_page(browser, region_http_url(mesh, "us-east"), errors)
    received: list[str] = []
    carol.on(
        "websocket",
        lambda socket: socket.on("framereceived", lambda frame: received.append(frame)),
    )
    await sign_in(carol, "carol")
    await sign_in(dave, "dave")
    prefix = unique("burst")
    count = 40  # twice the default burst of 20 messages per connection

    # Written faster than the edge's limit allows: the page must wait for
    # the edge and send the rest later, in order.
    await carol.evaluate(
        f"for (let i = 0; i < {count}; i++) sendMessage('dave', '{prefix}-' + i)"
    )
    await dave.click('#conversations li[data-conversation="dm:carol:dave"]')
    history = dave.locator("#messages li[data-seq] .content")
    await expect(history.last).to_have_text(f"{prefix}-{count - 1}", timeout=TIMEOUT_MS)
    burst = [t for t in await history.all_text_contents() if t.startswith(prefix)]

    assert burst == [f"{prefix}-{i}" for i in range(count)]
    await expect(carol.locator("#messages li.pending")).to_have_count(0)
    assert any('"rate_limited"' in str(frame) for frame in received)
    await expect(carol.locator("#compose-error")).to_have_text("")
    assert errors == []


async def test_page_shows_peer_presence(mesh: Mesh, browser: Browser) -> None:
    errors: list[str] = []
    erin = await open_page(browser, region_http_url(mesh, "eu-west"), errors)
    bob = await open_page(browser, region_http_url(mesh, "us-east"), errors)
    await sign_in(erin, "erin")
    await sign_in(bob, "bob")
    peer = erin.locator('#presence li[data-user="bob"]')

    # The first message makes bob a contact, whose presence erin may watch.
    await send(erin, "bob", unique("hello"))
    await expect(peer).to_have_attribute("data-online", "true", timeout=TIMEOUT_MS)
    assert await peer.get_attribute("title") == "online in us-east"

    await bob.context.close()
    await expect(peer).to_have_attribute("data-online", "false", timeout=TIMEOUT_MS)
    assert (await peer.get_attribute("title") or "").startswith("offline, last seen")

    bob = await open_page(browser, region_http_url(mesh, "us-east"), errors)
    await sign_in(bob, "bob")
    await expect(peer).to_have_attribute("data-online", "true", timeout=TIMEOUT_MS)
    assert errors == []
