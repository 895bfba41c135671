from pathlib import Path
from playwright.sync_api import Page, expect
from tests.web.test_browser import register, upload, ask, XSS_DOCUMENT

DOC = """# Giải tích

Công thức Euler: $e^{i\\pi} + 1 = 0$ và tích phân $$\\int_0^1 x^2 dx = \\frac{1}{3}$$

```python
def fib(n):
    return n if n < 2 else fib(n-1) + fib(n-2)
```
""" + XSS_DOCUMENT

def test_screens(page: Page, tmp_path: Path) -> None:
    out = Path("/tmp/screens"); out.mkdir(exist_ok=True)
    register(page)
    upload(page, tmp_path, "giai-tich.md", DOC.encode())
    page.screenshot(path=str(out / "docs.png"))
    ask(page, "Công thức Euler và hàm fib và zanzibar payload?")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "chat.png"), full_page=True)
    print("LINKS", page.evaluate("[...document.querySelectorAll('link')].map(l => l.href)"))
    print("MATHML", page.evaluate("(() => { const e = document.querySelector('.katex-mathml'); return e ? [e.outerHTML.slice(0, 300), getComputedStyle(e).position, getComputedStyle(e).clip] : null })()"))
    page.get_by_test_id("source-chip").first.click()
    page.screenshot(path=str(out / "cite.png"))
    page.keyboard.press("Escape")
    page.get_by_test_id("theme-switch").click()
    page.screenshot(path=str(out / "chat-dark.png"))
    page.goto("/#/dashboard"); page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "dash.png"))
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto("/#/chat"); page.wait_for_timeout(500)
    page.get_by_role("button", name="Menu").click(); page.wait_for_timeout(400)
    page.screenshot(path=str(out / "phone-drawer.png"))
    page.get_by_test_id("session-list").locator("a").first.click()
    page.wait_for_timeout(800)
    page.screenshot(path=str(out / "phone.png"))
    print(page.locator(".message.assistant .markdown").first.inner_html()[:3000])
