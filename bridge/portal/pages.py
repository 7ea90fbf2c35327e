"""The portal's pages: plain server-rendered HTML, no script, one stylesheet.

Every value from outside (user names, messages) goes through `html.escape`. Element
names that automation relies on are fixed (SPEC section 7): the fields `username`,
`password` and `code`, the QR code in `#qr`, the base32 key in `#secret-key`.
"""

from __future__ import annotations

from html import escape

STYLESHEET = """\
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
background:#f3f5f8;color:#1d2430}
main{max-width:30rem;margin:2rem auto;padding:0 1rem}
.card{background:#fff;border:1px solid #dde3ea;border-radius:12px;padding:1.5rem;
box-shadow:0 1px 3px rgba(20,30,50,.06)}
h1{font-size:1.35rem;margin:0 0 .75rem}
p{margin:.5rem 0 1rem}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
.hint{font-weight:400;color:#5b6677;font-size:.9rem}
input[type=text],input[type=password]{width:100%;padding:.65rem .75rem;font-size:1rem;
border:1px solid #b9c3cf;border-radius:8px}
input:focus{outline:2px solid #2f6fd6;outline-offset:1px}
button{margin-top:1rem;padding:.65rem 1.1rem;font-size:1rem;border:0;border-radius:8px;
background:#2f6fd6;color:#fff;cursor:pointer}
button.secondary{background:#e8edf3;color:#1d2430}
form.inline{display:inline}
.banner{border-radius:8px;padding:.75rem 1rem;margin:0 0 1rem}
.info{background:#eaf2ff;border:1px solid #bcd3fb}
.ok{background:#e9f7ef;border:1px solid #b6e2c6}
.warn{background:#fff6e5;border:1px solid #f3d49b}
.error{background:#fdecec;border:1px solid #f2b8b8}
#qr{display:flex;justify-content:center;margin:1rem 0}
#qr svg{width:220px;height:220px}
#secret-key{font:600 1.05rem/1.4 ui-monospace,"DejaVu Sans Mono",monospace;
letter-spacing:.08em;word-break:break-all;background:#f3f5f8;border-radius:8px;
padding:.6rem .75rem;display:block}
dl{display:grid;grid-template-columns:auto 1fr;gap:.25rem 1rem;margin:0 0 1rem}
dt{color:#5b6677}
dd{margin:0;font-weight:600}
footer{color:#5b6677;font-size:.85rem;text-align:center;margin-top:1rem}
"""

APPS = "Google Authenticator, Duo Mobile, FreeOTP or Yubico Authenticator"


def page(title: str, body: str) -> bytes:
    """A whole HTML document around `body` (already escaped HTML)."""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · MFA</title>"
        '<link rel="stylesheet" href="/static/portal.css"></head>'
        f'<body><main><div class="card">{body}</div>'
        "<footer>Multi-factor authentication self-service</footer></main></body></html>\n"
    ).encode()


def banner(kind: str, text: str) -> str:
    """A coloured message box: info, ok, warn or error."""
    return f'<div class="banner {kind}" role="status">{escape(text)}</div>'


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(csrf)}">'


def sign_in(csrf: str, *, message: str = "", kind: str = "error", username: str = "") -> bytes:
    """User name, password, and the code for users who have set up MFA."""
    return page(
        "Sign in",
        "<h1>Sign in</h1>"
        + (banner(kind, message) if message else "")
        + "<p>Use your usual user name and password.</p>"
        '<form method="post" action="/sign-in">'
        + csrf_field(csrf)
        + '<label for="username">User name</label>'
        f'<input type="text" id="username" name="username" value="{escape(username)}"'
        ' autocomplete="username" autocapitalize="none" spellcheck="false" required>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password"'
        ' autocomplete="current-password" required>'
        '<label for="code">6-digit code <span class="hint">(only once MFA is set up)</span>'
        "</label>"
        '<input type="text" id="code" name="code" inputmode="numeric" pattern="[0-9]{6}"'
        ' maxlength="6" autocomplete="one-time-code">'
        '<button type="submit">Sign in</button></form>',
    )


def sign_out_form(csrf: str) -> str:
    return (
        '<form method="post" action="/sign-out" class="inline">'
        + csrf_field(csrf)
        + '<button type="submit" class="secondary">Sign out</button></form>'
    )


def days_text(days: int) -> str:
    unit = "day" if days == 1 else "days"
    return f"{days} {unit}"


def status(
    username: str,
    state: str,
    deadline: str | None,
    days_left: int | None,
    csrf: str,
    *,
    message: str = "",
) -> bytes:
    """What the user's MFA looks like now, and what they can do about it."""
    parts = ["<h1>Your MFA</h1>"]
    if message:
        parts.append(banner("ok", message))
    if state in ("grace", "pending") and days_left is not None:
        parts.append(
            banner(
                "warn",
                f"You have {days_text(days_left)} left to set up MFA. After that, signing in "
                "without a code stops working and IT has to unlock your account.",
            )
        )
    label = {
        "grace": "not set up yet",
        "pending": "not confirmed yet",
        "active": "set up",
        "exempt": "not needed for your account",
    }.get(state, state)
    parts.append(
        f'<dl><dt>User</dt><dd id="user">{escape(username)}</dd>'
        f'<dt>MFA</dt><dd id="state" data-state="{escape(state)}">{escape(label)}</dd>'
    )
    if deadline is not None and state in ("grace", "pending"):
        parts.append(f'<dt>Set up by</dt><dd id="deadline">{escape(deadline[:10])}</dd>')
    parts.append("</dl>")
    if state == "active":
        parts.append(
            "<p>You sign in with your password and the 6-digit code from your app. "
            "New phone, or lost the old one? Reset MFA; you will need a code from the "
            "app you use now. Without it, ask your IT admin.</p>"
            '<form method="get" action="/reset" class="inline">'
            '<button type="submit">Reset MFA</button></form> '
        )
    else:
        parts.append(
            f"<p>It takes a minute: scan a QR code with {APPS}, then type the code it shows.</p>"
            '<form method="get" action="/setup" class="inline">'
            '<button type="submit">Set up MFA</button></form> '
        )
    parts.append(sign_out_form(csrf))
    return page("Your MFA", "".join(parts))


def setup(qr_svg: str, secret_key: str, csrf: str, *, message: str = "") -> bytes:
    """The QR code, the key beneath it, and the form for the first code."""
    return page(
        "Set up MFA",
        "<h1>Set up MFA</h1>"
        + (banner("error", message) if message else "")
        + f"<p><strong>1.</strong> Open {APPS} on your phone and scan this code.</p>"
        f'<div id="qr" role="img" aria-label="QR code of your MFA key">{qr_svg}</div>'
        "<p>Cannot scan it? Add the account by hand with this key:</p>"
        f'<code id="secret-key">{escape(secret_key)}</code>'
        '<p class="hint">Keep a copy of this key somewhere safe, such as your password '
        "manager: with it you can set up a new phone yourself. Do not share it.</p>"
        "<p><strong>2.</strong> Enter the 6-digit code your app now shows.</p>"
        '<form method="post" action="/setup">'
        + csrf_field(csrf)
        + '<label for="code">Code from the app</label>'
        '<input type="text" id="code" name="code" inputmode="numeric" pattern="[0-9]{6}"'
        ' maxlength="6" autocomplete="one-time-code" required autofocus>'
        '<button type="submit">Confirm</button></form>'
        '<form method="get" action="/" class="inline">'
        '<button type="submit" class="secondary">Not now</button></form>',
    )


def reset(csrf: str, *, message: str = "") -> bytes:
    """Prove the current device before a new secret is issued."""
    return page(
        "Reset MFA",
        "<h1>Reset MFA</h1>"
        + (banner("error", message) if message else "")
        + "<p>First, show that you still have your current app: enter the code it shows "
        "now. If it is the code you just signed in with, wait for the next one.</p>"
        '<form method="post" action="/reset">'
        + csrf_field(csrf)
        + '<label for="code">Code from your current app</label>'
        '<input type="text" id="code" name="code" inputmode="numeric" pattern="[0-9]{6}"'
        ' maxlength="6" autocomplete="one-time-code" required autofocus>'
        '<button type="submit">Continue</button></form>'
        '<p class="hint">Lost your phone? Ask your IT admin to reset MFA for you.</p>'
        '<form method="get" action="/" class="inline">'
        '<button type="submit" class="secondary">Back</button></form>',
    )


LOCK_TEXT = {
    "enrollment-expired": "The time to set up MFA has run out.",
    "failures": "There were too many wrong codes.",
    "admin": "An administrator has locked it.",
}


def locked(lock_reason: str | None) -> bytes:
    """For a locked user, after a correct password only."""
    why = LOCK_TEXT.get(lock_reason or "", "")
    return page(
        "Account locked",
        "<h1>Your account is locked</h1>"
        + banner("error", f"{why} Signing in is not possible until it is unlocked.".strip())
        + "<p><strong>Contact your IT admin</strong> to unlock your account. "
        "Nothing you can do here will unlock it.</p>"
        '<form method="get" action="/" class="inline">'
        '<button type="submit" class="secondary">Back</button></form>',
    )


def message(title: str, text: str, kind: str = "error") -> bytes:
    """A short page with one message and a way back (errors, limits, expiry)."""
    return page(
        title,
        f"<h1>{escape(title)}</h1>"
        + banner(kind, text)
        + '<form method="get" action="/" class="inline">'
        '<button type="submit" class="secondary">Back</button></form>',
    )
