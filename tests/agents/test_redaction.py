"""Secret redaction: keys, in-string masking, per-task overrides, robustness.

Behaviour only; timings live in benchmarks, never here.
"""

from __future__ import annotations

import copy
import json
import random
import string

import pytest

from z4j_agents.redaction import (
    CYCLE,
    DEPTH_LIMIT,
    MASK,
    Redactor,
    TaskRedaction,
    default_redactor,
)

R = Redactor()


def redact(value, task_name=None):
    return R.redact(value, task_name)


def text(value, task_name=None):
    return R.redact_text(value, task_name)


# --- keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "db_password",
        "stripe_api_key",
        "aws_secret_access_key",
        "private_key",
        "X-Api-Key",
        "Authorization",
        "HTTP_AUTHORIZATION",
        "auth",
        "oauth_token",
        "auth_header",
        "authHeader",
        "refresh_token",
        "client_secret",
        "Cookie",
        "session_id",
        "passwd",
        "mysql_pwd",
        "DB_PASS",
        "smtpPass",
        "db_pw",
        "user_ssn",
        "SSN",
        "credit_card",
        "card_number",
        "cvv",
        "signature",
        "credentials",
        "jwt",
        "AccountKey",
    ],
)
def test_sensitive_key_values_are_masked(key):
    out, hit = redact({key: "s3cr3t-value", "other": "kept"})
    assert out == {key: MASK, "other": "kept"}
    assert hit is True


@pytest.mark.parametrize(
    "key",
    [
        "author",
        "author_id",
        "authored_at",
        "coauthor",
        "authority",
        "tokenizer",
        "shipping_address",
        "classname",
        "business_name",
        "passenger",
        "user_id",
        "email",
        "amount",
        "keyword",
        "description",
    ],
)
def test_benign_keys_are_kept(key):
    value = {key: "plain value here"}
    assert redact(value) == (value, False)


def test_sensitive_key_masks_every_leaf_and_keeps_structure():
    out, hit = redact({"credentials": {"user": "bob", "tokens": ["t1", 2, None]}, "n": 1})
    assert out == {"credentials": {"user": MASK, "tokens": [MASK, MASK, MASK]}, "n": 1}
    assert hit


def test_authorization_header_dict():
    headers = {
        "Authorization": "Bearer abc.def-ghi_jkl",
        "Accept": "application/json",
        "X-Request-Id": "req-1234567890",
    }
    out, hit = redact({"headers": headers})
    assert out == {
        "headers": {
            "Authorization": MASK,
            "Accept": "application/json",
            "X-Request-Id": "req-1234567890",
        }
    }
    assert hit


def test_header_pairs_mask_the_value():
    pairs = [("Authorization", "Token abcdef123"), (b"x-api-key", b"k-123456"), ("Accept", "*/*")]
    out, hit = redact(pairs)
    assert out == [["Authorization", MASK], ["x-api-key", MASK], ["Accept", "*/*"]]
    assert hit


# --- values inside strings -----------------------------------------------------

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


def test_jwt_inside_a_longer_string_keeps_the_rest():
    out, hit = text(f"session for user 42 is {JWT} (expires soon)")
    assert out == f"session for user 42 is {MASK} (expires soon)"
    assert hit


def test_database_url_in_a_traceback_masks_only_the_password():
    lines = [
        "Traceback (most recent call last):",
        '  File "/app/tasks/reports.py", line 88, in build_report',
        "    conn = connect(settings.DATABASE_URL)",
        "sqlalchemy.exc.OperationalError: could not connect to "
        "postgres://user:pw@db.internal:5432/reports",
        "contact: ops@example.com",
    ]
    out, hit = text("\n".join(lines))
    out_lines = out.split("\n")
    assert hit
    assert out_lines[3].endswith(f"postgres://user:{MASK}@db.internal:5432/reports")
    for i in (0, 1, 2, 4):
        assert out_lines[i] == lines[i]
    assert ":pw@" not in out


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@localhost:6379/0", f"redis://:{MASK}@localhost:6379/0"),
        ("postgres://user:pw@host/db", f"postgres://user:{MASK}@host/db"),
        ("amqp://guest:guest@rabbit:5672//", f"amqp://guest:{MASK}@rabbit:5672//"),
        ("mysql://root:p@ss@db/app", f"mysql://root:{MASK}@db/app"),
        ("https://bob:hunter22@example.com/x?y=1", f"https://bob:{MASK}@example.com/x?y=1"),
        ("https://example.com:8443/path", "https://example.com:8443/path"),
        ("https://user@example.com/path", "https://user@example.com/path"),
    ],
)
def test_urls_with_credentials(url, expected):
    out, hit = text(f"broker={url} ok")
    assert out == f"broker={expected} ok"
    assert hit is (url != expected)


def test_bearer_token_in_a_log_line():
    line = "2024-05-01 12:00:01 INFO GET /api/v1/x auth=Bearer abcDEF123456xyz status=200"
    out, hit = text(line)
    assert out == "2024-05-01 12:00:01 INFO GET /api/v1/x auth=Bearer [redacted] status=200"
    assert hit
    out, _ = text("calling upstream with Bearer abcDEF123456xyz now")
    assert out == f"calling upstream with Bearer {MASK} now"


def test_basic_auth_only_when_it_decodes_to_credentials():
    out, hit = text("header Basic dXNlcjpwYXNzd29yZA== sent")
    assert out == f"header Basic {MASK} sent"
    assert hit
    prose = "Basic information about Basic Settings"
    assert text(prose) == (prose, False)


def test_pem_private_key_block_body_is_masked():
    pem = (
        "-----BEGIN RSA PRIVATE KEY-----\n"
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
        "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
        "-----END RSA PRIVATE KEY-----"
    )
    out, hit = text(f"loaded key:\n{pem}\ndone")
    assert out == (
        f"loaded key:\n-----BEGIN RSA PRIVATE KEY-----\n{MASK}\n"
        "-----END RSA PRIVATE KEY-----\ndone"
    )
    assert hit
    # Unterminated (cut) blocks are masked to the end.
    out, _ = text(pem[:120])
    assert "MIIEow" not in out and out.startswith("-----BEGIN RSA PRIVATE KEY-----")


@pytest.mark.parametrize(
    "secret",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAY34FZKBOKMUTVV7A",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_51H8abcdEFGHijklMNOP",
        "whsec_abcdefghijklmnopqrstuvwxyz012345",
        "ghp_" + "a1B2c3D4e5" * 3 + "abcdef",
        "gho_" + "Z" * 36,
        "ghs_" + "0123456789" * 4,
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxp-1234-5678-abcdefghij",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    ],
)
def test_cloud_and_saas_tokens_are_masked_in_place(secret):
    out, hit = text(f"using {secret} for the call")
    assert out == f"using {MASK} for the call"
    assert hit


def test_slack_webhook_url_path_is_masked():
    url = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
    out, hit = text(f"posting to {url} failed")
    assert out == f"posting to https://hooks.slack.com/services/{MASK} failed"
    assert hit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("password=hunter2 other=ok", f"password={MASK} other=ok"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", f"aws_secret_access_key = {MASK}"),
        ("DB_PASSWORD=abc123;HOST=db", f"DB_PASSWORD={MASK};HOST=db"),
        ('{"token": "abc def", "x": 1}', f'{{"token": "{MASK}", "x": 1}}'),
        ("{'password': 'hunter 2', 'x': 1}", f"{{'password': '{MASK}', 'x': 1}}"),
        ('{\\"api_key\\": \\"k y\\"}', f'{{\\"api_key\\": \\"{MASK}\\"}}'),
        ("Authorization: Bearer abcdef123456", f"Authorization: Bearer {MASK}"),
        ("X-Api-Key: 0123456789abcdef\nAccept: */*", f"X-Api-Key: {MASK}\nAccept: */*"),
        ("GET /cb?code=1&access_token=xyz123&state=s", f"GET /cb?code=1&access_token={MASK}&state=s"),
        ("Config(user='bob', password='hunter2')", f"Config(user='bob', password='{MASK}')"),
        ("x=password=abc end", f"x=password={MASK} end"),
        ("redis_url=redis://:pw@h:6379/0", f"redis_url=redis://:{MASK}@h:6379/0"),
        ("{'session': {'id': 'abc', 'user': 7}, 'n': 1}", f"{{'session': {MASK}, 'n': 1}}"),
        ('"tokens": ["a1", "b2"], "n": 1', f'"tokens": {MASK}, "n": 1'),
        ("TokenError: token=abc expired", f"TokenError: token={MASK} expired"),
    ],
)
def test_assignments_in_text_mask_only_the_value(raw, expected):
    out, hit = text(raw)
    assert out == expected
    assert hit


@pytest.mark.parametrize(
    "raw",
    [
        'if password == "x": pass',  # comparison, not assignment
        "author: Jane Doe, author_id=7",
        "see https://example.com/a:b for details",
        "tokenizer: bert-base",
        "AuthenticationError: invalid login for bob",
        "ValueError: invalid literal for int() with base 10: 'abc'",
    ],
)
def test_text_without_secrets_is_unchanged(raw):
    assert text(raw) == (raw, False)


def test_email_addresses_are_kept():
    value = {"email": "jane.doe@example.com", "note": "reply to ops-team@example.org please"}
    assert redact(value) == (value, False)
    tb = "Traceback (most recent call last):\nValueError: no account for jane.doe@example.com\n"
    assert text(tb) == (tb, False)


def test_long_traceback_with_assignment_is_masked():
    frame = '  File "/app/tasks/billing.py", line 120, in charge\n    result = client.charge(c=c)\n'
    tb = "Traceback (most recent call last):\n" + frame * 20
    assert text(tb) == (tb, False)
    secret_tb = tb + "RuntimeError: login failed with password=hunter2 for user=bob\n"
    out, hit = text(secret_tb)
    assert hit
    assert out == tb + f"RuntimeError: login failed with password={MASK} for user=bob\n"


# --- structure and types -----------------------------------------------------


def _nested(levels, secrets):
    root = node = {}
    for level in range(1, levels + 1):
        child = {}
        if level in secrets:
            child["password"] = secrets[level]
            child["visible"] = f"level {level}"
        node["child"] = child
        node = child
    return root


def test_deep_nesting_is_limited_not_fatal():
    value = _nested(50, {20: "SECRET-AT-20", 45: "SECRET-AT-45"})
    out, hit = redact(value)
    assert hit
    assert "SECRET-AT-20" not in repr(out)
    assert "SECRET-AT-45" not in repr(out)
    node, levels = out, 0
    while isinstance(node, dict):
        if levels == 20:
            assert node["password"] == MASK and node["visible"] == "level 20"
        node, levels = node["child"], levels + 1
    assert node == DEPTH_LIMIT
    assert levels >= 32


def test_deep_lists_are_limited_too():
    value = leaf = []
    for _ in range(5000):
        inner = []
        leaf.append(inner)
        leaf = inner
    out, hit = redact(value)
    assert not hit
    assert DEPTH_LIMIT in repr(out)


def test_cycles_are_cut():
    loop = [1, "two"]
    loop.append(loop)
    assert redact(loop) == ([1, "two", CYCLE], False)
    node = {"name": "root"}
    node["self"] = node
    node["kids"] = [node, {"parent": node}]
    out, _ = redact(node)
    assert out == {"name": "root", "self": CYCLE, "kids": [CYCLE, {"parent": CYCLE}]}
    shared = {"a": 1}
    assert redact([shared, shared]) == ([{"a": 1}, {"a": 1}], False)


def test_input_is_never_mutated():
    value = {
        "password": "hunter2",
        "nested": {"token": ["a", "b"], "ok": (1, 2)},
        "items": [{"api_key": "k"}, {1, 2}],
        "url": "postgres://u:pw@h/db",
    }
    before = copy.deepcopy(value)
    out, hit = redact(value)
    assert hit
    assert value == before
    assert out is not value and out["nested"] is not value["nested"]


def test_non_str_keys_are_stringified():
    out, hit = redact({1: "a", None: "b", (1, 2): "c", b"password": "d", 2.5: "e"})
    assert out == {"1": "a", "None": "b", "(1, 2)": "c", "password": MASK, "2.5": "e"}
    assert hit


def test_bytes_are_decoded_then_scanned():
    out, hit = redact({"body": b"password=hunter2&x=1", "raw": b"\xff\xfeok", "mv": memoryview(b"hi")})
    assert out == {"body": f"password={MASK}&x=1", "raw": "\ufffd\ufffdok", "mv": "hi"}
    assert hit


class _Config:
    def __repr__(self):
        return "Config(host='db', password='hunter2')"


class _Broken:
    def __repr__(self):
        raise RuntimeError("no repr for you")


def test_arbitrary_objects_become_their_scanned_repr():
    out, hit = redact({"cfg": _Config(), "broken": _Broken(), "n": 1})
    assert out == {
        "cfg": f"Config(host='db', password='{MASK}')",
        "broken": "<unrepresentable _Broken>",
        "n": 1,
    }
    assert hit


def test_sets_and_tuples_become_lists():
    out, hit = redact({"t": (1, "a", (2,)), "s": {3}, "f": frozenset({"x"})})
    assert out == {"t": [1, "a", [2]], "s": [3], "f": ["x"]}
    assert hit is False


def test_scalars_are_kept():
    for value in (0, -1, 2**70, 1.5, float("inf"), True, False, None, "", "short"):
        out, hit = redact(value)
        assert out == value and type(out) is type(value) and hit is False


def test_redacted_flag():
    assert redact({"user_id": 1, "note": "nothing to see here"})[1] is False
    assert redact({"password": None})[1] is True
    assert redact(["fine", "Bearer abcdefghijklmnop"])[1] is True
    assert text("nothing secret in this message at all")[1] is False


def test_string_truncation_after_masking():
    r = Redactor(max_string=100)
    value = "x" * 95 + "password=hunter2hunter2 " + "y" * 200
    out, hit = r.redact(value)
    assert hit
    assert "hunter2" not in out
    assert len(out) <= 100
    assert out.startswith("x" * 40)
    dropped = int(out.rsplit("[truncated ", 1)[1].split(" ")[0])
    assert dropped > 0 and out.endswith(f"…[truncated {dropped} chars]")
    assert r.redact(out) == (out, False)  # a second pass leaves it alone
    assert r.redact("z" * 100) == ("z" * 100, False)


def test_huge_string_is_cut_without_leaking():
    r = Redactor(max_string=1000)
    value = "a " * 50_000 + "token=abcdef123456"
    out, hit = r.redact(value)
    assert len(out) <= 1000 and "abcdef123456" not in out
    assert hit is False  # the token lay beyond the scanned window and is gone anyway


# --- overrides and configuration -------------------------------------------------


def test_per_task_redact_all():
    r = Redactor(overrides={"billing.charge": TaskRedaction(redact_all=True)})
    assert r.redact({"amount": 10}, task_name="billing.charge") == (MASK, True)
    assert r.redact(None, task_name="billing.charge") == (MASK, True)
    assert r.redact({"amount": 10}, task_name="billing.refund") == ({"amount": 10}, False)
    assert r.redact({"amount": 10}) == ({"amount": 10}, False)
    # Tracebacks keep in-string masking only, even for a fully redacted task.
    assert r.redact_text("ValueError: amount too big", "billing.charge") == (
        "ValueError: amount too big",
        False,
    )


def test_per_task_extra_key():
    r = Redactor(overrides={"users.create": TaskRedaction(extra_keys=("date_of_birth",))})
    value = {"DateOfBirth": "1990-01-01", "name": "Jane"}
    assert r.redact(value, "users.create") == ({"DateOfBirth": MASK, "name": "Jane"}, True)
    assert r.redact(value, "users.other") == (value, False)
    out, _ = r.redact_text("date-of-birth: 1990-01-01, name: Jane", "users.create")
    assert out == f"date-of-birth: {MASK}, name: Jane"


def test_per_task_extra_pattern():
    r = Redactor(overrides={"kyc.check": TaskRedaction(extra_patterns=(r"\b\d{3}-\d{2}-\d{4}\b",))})
    assert r.redact("ssn 123-45-6789 ok", "kyc.check") == (f"ssn {MASK} ok", True)
    assert r.redact("ssn 123-45-6789 ok", "other.task") == ("ssn 123-45-6789 ok", False)
    assert r.redact_text("bad 123-45-6789", "kyc.check") == (f"bad {MASK}", True)


def test_global_extra_pattern_and_secret_group():
    r = Redactor(extra_patterns=(r"acct-\d{4}", r"pin (?P<secret>\d{4})"))
    assert r.redact("acct-1234") == (MASK, True)  # shorter than the 8-char fast path
    assert r.redact({"note": "card pin 4321 set"}) == ({"note": f"card pin {MASK} set"}, True)
    assert r.redact("acct-12", "any.task") == ("acct-12", False)
    # An override adds to the global patterns.
    r2 = Redactor(extra_patterns=("acct-\\d{4}",), overrides={"t": TaskRedaction(extra_keys=("iban",))})
    assert r2.redact({"iban": "DE89", "n": "acct-9999"}, "t") == ({"iban": MASK, "n": MASK}, True)


def test_empty_matching_pattern_does_not_sprinkle_masks():
    r = Redactor(extra_patterns=(r"x*",))
    assert r.redact("abc") == ("abc", False)
    assert r.redact("axxb") == (f"a{MASK}b", True)


@pytest.mark.parametrize("bad", ["(unclosed", "[a-", "*oops"])
def test_invalid_pattern_raises_value_error_naming_it(bad):
    with pytest.raises(ValueError) as info:
        Redactor(extra_patterns=(bad,))
    message = str(info.value)
    assert repr(bad) in message and "\n" not in message
    with pytest.raises(ValueError):
        Redactor(overrides={"t": TaskRedaction(extra_patterns=(bad,))})


def test_constructor_validation():
    with pytest.raises(ValueError):
        Redactor(max_depth=0)
    with pytest.raises(ValueError):
        Redactor(max_depth=10_000)
    with pytest.raises(ValueError):
        Redactor(extra_keys=("--",))
    with pytest.raises(ValueError):
        Redactor(overrides={"t": {"redact_all": True}})  # type: ignore[dict-item]


def test_task_redaction_accepts_lists_and_single_strings():
    override = TaskRedaction(extra_keys=["iban"], extra_patterns="acct-\\d+")  # type: ignore[arg-type]
    assert override.extra_keys == ("iban",) and override.extra_patterns == ("acct-\\d+",)
    r = Redactor(extra_keys="tenant", overrides={"t": override})  # type: ignore[arg-type]
    assert r.redact({"TenantId": 5, "iban": "x"}, "t") == ({"TenantId": MASK, "iban": MASK}, True)


def test_default_redactor_is_shared():
    assert default_redactor() is default_redactor()
    assert isinstance(default_redactor(), Redactor)


# --- robustness ---------------------------------------------------------------------


class _ExplodingDict(dict):
    def items(self):
        raise RuntimeError("boom")


class _BadKey:
    def __str__(self):
        raise RuntimeError("no str")

    def __repr__(self):
        raise RuntimeError("no repr")

    def __hash__(self):
        return 1


def test_never_raises_and_fails_closed():
    assert redact(_ExplodingDict(a=1)) == (MASK, True)
    out, _ = redact({_BadKey(): 1})
    assert out == {"<unrepresentable _BadKey>": 1}
    assert text(b"password=x1234567") == (f"password={MASK}", True)
    assert text(ValueError("token: abcdefgh")) == (f"token: {MASK}", True)
    assert R.redact({"a": 1}, task_name=["unhashable"]) == ({"a": 1}, False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "hostile",
    [
        "eyJ" * 20_000,
        ".eyJ" + ".eyJaaaa" * 8_000,
        "-----BEGIN PRIVATE KEY-----" + " " * 60_000 + "x",
        "x://u:" + "p" * 60_000,
        "a:" * 30_000,
        "password=x " * 6_000,
        'password="' + "a\\" * 30_000,
        "token: " + "{" * 30_000 + "}" * 30_000,
    ],
)
def test_hostile_strings_complete(hostile):
    # Guards against quadratic patterns ("eyJ" * 20_000 once took seconds).
    out, _ = text(hostile)
    assert isinstance(out, str) and len(out) <= R.max_string


# --- property-style checks (seeded loops, no hypothesis) ------------------------------

_SECRETS = [
    ("password=hunter2x", "hunter2x"),
    (f"Bearer {JWT}", JWT),
    ("postgres://app:Sup3rS3cret@db/app", "Sup3rS3cret"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("ghp_" + "q" * 36, "q" * 36),
    ("'api_key': 'zz-key-9876'", "zz-key-9876"),
]
_WORDS = ["alpha", "beta", "user", "42", "ok", "jane@example.com", "line", "(x)", "a-b", "done."]


def _random_value(rng, depth=0):
    kind = rng.randrange(8 if depth < 4 else 4)
    if kind == 0:
        return rng.randrange(-1000, 1000)
    if kind == 1:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 8)))
    if kind == 2:
        return rng.choice([None, True, 1.25, b"bytes!", ""])
    if kind == 3:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(40)))
    if kind in (4, 5):
        keys = ["id", "name", "note", "items", 3, "meta", ("t", 1)]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))


def test_property_random_values_are_json_shaped_and_idempotent():
    rng = random.Random(1234)
    for _ in range(300):
        value = _random_value(rng)
        before = copy.deepcopy(value)
        out, _ = redact(value)
        assert value == before
        json.dumps(out)  # keys are str, containers are dict/list
        assert redact(out) == (out, False)


def test_property_planted_secrets_never_survive():
    rng = random.Random(99)
    for _ in range(300):
        planted, secret = rng.choice(_SECRETS)
        words = [rng.choice(_WORDS) for _ in range(rng.randrange(0, 12))]
        words.insert(rng.randrange(len(words) + 1), planted)
        sentence = rng.choice([" ", "\n", " | "]).join(words)
        holder = rng.choice(
            [
                lambda s: s,
                lambda s: {"note": s},
                lambda s: [1, {"deep": [s]}],
                lambda s: (s.encode(),),
                lambda s: {"password": {"nested": s}},
            ]
        )
        out, hit = redact(holder(sentence))
        assert hit, sentence
        assert secret not in repr(out), sentence
        assert redact(out) == (out, False)


def test_property_text_around_a_secret_is_preserved():
    rng = random.Random(7)
    for _ in range(300):
        planted, secret = rng.choice(_SECRETS[:5])
        before = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(0, 6)))
        after = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(0, 6)))
        out, hit = text(f"{before}\n{planted}\n{after}")
        assert hit and secret not in out
        assert out.startswith(before + "\n") and out.endswith("\n" + after)


def test_property_plain_words_are_identity():
    rng = random.Random(5)
    for _ in range(300):
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 30)))
        assert text(sentence) == (sentence, False)
        assert redact({"note": sentence, "n": [sentence]}) == ({"note": sentence, "n": [sentence]}, False)


# --- fast paths: each must be exact, never a way around a family ---------------------
#
# _Policy.text skips everything for strings that _TRIGGERS does not match, and
# the key=value scan for strings whose keys are all known harmless. Both are
# checked against the plain gated scan they replace (kept here as the reference).

from z4j_agents import redaction as _r  # noqa: E402

_REF_HINTS = ("k_live_", "k_test_", "whsec_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")


def _reference_text(policy, s):
    """The scan before the fast paths: every family gated by ``in`` tests only."""
    colon = ":" in s
    if "-" in s and "PRIVATE KEY" in s:
        s = _r._PEM.sub(_r._mask_pem, s)
    if colon and "://" in s:
        s = _r._URL_PASSWORD.sub(_r._URL_REPL, s)
        if "hooks" in s:
            s = _r._WEBHOOK.sub(_r._mask_webhook, s)
    if "eyJ" in s:
        s = _r._JWT.sub(MASK, s)
    if ("_" in s and any(h in s for h in _REF_HINTS)) or "xox" in s or any(h in s for h in ("AIza", "AKIA", "ASIA")):
        s = _r._PREFIXED.sub(MASK, s)
    if "earer" in s or "EARER" in s:
        s = _r._BEARER.sub(_r._BEARER_REPL, s)
    if "asic" in s or "ASIC" in s:
        s = _r._BASIC.sub(_r._mask_basic, s)
    if colon or "=" in s:
        s = policy._assignments(s)
    for rx in policy._extra_res:
        s = rx.sub(_r._mask_extra, s)
    return s


_FAMILY_SAMPLES = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----",
    "postgres://app:Sup3rS3cret@db/app",
    "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    JWT,
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "rk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "whsec_abcdefghijklmnopqrstuvwxyz012345",
    "ghr_" + "x" * 36,
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    "AKIAIOSFODNN7EXAMPLE",
    "ASIAY34FZKBOKMUTVV7A",
    "Bearer abcdef123456",
    "BEARER abcdef123456",
    "Basic dXNlcjpwYXNzd29yZA==",
    "BASIC dXNlcjpwYXNzd29yZA==",
    "password=hunter2x",
    "api_key: abcdefgh",
]


@pytest.mark.parametrize("secret", _FAMILY_SAMPLES)
def test_every_family_is_caught_by_the_trigger_prefilter(secret):
    # The prefilter must match anything a family masks, alone or inside text,
    # in a bare string and in a structure (the inlined fast paths).
    assert _r._TRIGGERS.search(secret) is not None
    assert text(secret)[1], secret
    for holder in (f"x {secret} y", [f"x {secret} y"], {"note": f"x {secret} y"}, (1, f"{secret}")):
        out, hit = redact(holder)
        assert hit and out != holder, holder


def _corpus(rng):
    words = _WORDS + ["db.get_session()", "key", "value", "a=b", "x: y", "::", "==", "://", "Error:",
                      "TokenError: x", "author: me", "tokenizer=x", "id_token=abcdefgh", "'secret': 'k v'"]
    words += _FAMILY_SAMPLES
    for _ in range(2000):
        parts = [rng.choice(words) for _ in range(rng.randrange(1, 12))]
        if rng.random() < 0.3:
            parts.append("".join(rng.choice(string.printable) for _ in range(rng.randrange(60))))
        yield rng.choice([" ", "", "\n", ", ", "&"]).join(parts)


def test_fast_paths_agree_with_the_reference_scan():
    policy = Redactor()._default
    rng = random.Random(2024)
    for s in _corpus(rng):
        assert policy.text(s) == _reference_text(policy, s), s
    # A long text (over 256 chars: the key pre-check always ran there).
    for s in _corpus(rng):
        long = (s + " | ") * 30
        assert policy.text(long) == _reference_text(policy, long)
    # Long texts of many lines (a traceback's shape): masked a line at a time,
    # with harmless lines remembered, and each line is seen again in another text.
    lines = list(_corpus(rng))
    for _ in range(300):
        long = "\n".join(rng.choice(lines) for _ in range(rng.randrange(10, 60)))
        assert policy.text(long) == _reference_text(policy, long), long
        assert policy.text(long) == _reference_text(policy, long), long  # every line now seen once


def test_a_long_text_is_masked_a_line_at_a_time_and_its_harmless_lines_remembered():
    policy = Redactor()._default
    frames = "\n".join(f'  File "/app/tasks.py", line {n}, in run\n    x = call(a, b={n})' for n in range(40))
    secret = f"{frames}\npsycopg.OperationalError: password=hunter2x at postgres://app:s3cret@db/app"
    out = policy.text(secret)
    assert out == _reference_text(policy, secret)
    assert "hunter2x" not in out and "s3cret" not in out and out.startswith(frames)
    assert '    x = call(a, b=7)' in policy._harmless_lines  # a harmless line, not scanned again
    assert not any("hunter2x" in line for line in policy._harmless_lines)
    # A PEM block spans lines: the whole text is scanned, as before.
    pem = f"{frames}\n" + _FAMILY_SAMPLES[0]
    assert "MIIEabc" not in policy.text(pem) and policy.text(pem) == _reference_text(policy, pem)


def test_harmless_key_cache_never_hides_a_later_secret():
    r = Redactor()
    # The same keys, first harmless, then one sensitive next to them.
    assert r.redact_text("user=bob id=7 port=5432") == ("user=bob id=7 port=5432", False)
    assert r.redact_text("user=bob id=7 password=hunter2x") == (f"user=bob id=7 password={MASK}", True)
    assert r.redact_text("user=bob id=7 port=5432") == ("user=bob id=7 port=5432", False)
    long = "frame user=bob\n" * 40
    assert r.redact_text(long) == (long, False)
    assert r.redact_text(long + "token: abcdefgh\n") == (long + f"token: {MASK}\n", True)


def test_redact_event_fast_paths_match_redact():
    from z4j_agents import protocol as p

    values = [None, 0, 1.5, True, "short", "plain words only here", "AKIAIOSFODNN7EXAMPLE",
              "password=hunter2x", [1, "x"], ("t", "AKIAIOSFODNN7EXAMPLE"), {"api_key": 5}, "x" * 70_000]
    for policy in (Redactor(), Redactor(extra_patterns=[r"ord[0-9]+"]),
                   Redactor(overrides={"t": TaskRedaction(redact_all=True)})):
        for value in values + ["ord12345"]:
            event = p.TaskEvent(id="e", task_id="t1", engine="x", kind="received", ts=1.0, name="t",
                                args=value, kwargs=value, result=value)
            expected, hit = policy.redact(value, "t")
            assert _r.redact_event(policy, event) is (hit if value is not None else False)
            if value is not None:
                assert (event.args, event.kwargs, event.result) == (expected,) * 3
        for value in ("plain words only here", "see AKIAIOSFODNN7EXAMPLE", "x" * 70_000, "ord1"):
            event = p.TaskEvent(id="e", task_id="t1", engine="x", kind="failed", ts=1.0, name="t",
                                exception=value, traceback=value)
            expected, hit = policy.redact_text(value, "t")
            assert _r.redact_event(policy, event) is hit
            assert (event.exception, event.traceback) == (expected, expected)
