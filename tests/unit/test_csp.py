"""handlers/csp.py: every Content-Security-Policy denies by default and forbids framing."""

from __future__ import annotations

import pytest

from tidings.handlers.csp import API_CSP, DOCS_CSP, PAGE_CSP, content_security_policy

pytestmark = pytest.mark.unit


def directives(policy: str) -> dict[str, str]:
    """The policy's directives by name; a name given twice fails (browsers would ignore the second)."""
    parsed: dict[str, str] = {}
    for directive in policy.split("; "):
        name, _, value = directive.partition(" ")
        assert name not in parsed, f"{name} appears twice in {policy!r}"
        parsed[name] = value
    return parsed


def test_the_empty_policy_denies_everything_and_framing() -> None:
    assert content_security_policy() == "default-src 'none'; frame-ancestors 'none'"


def test_api_csp_is_the_empty_policy() -> None:
    assert API_CSP == "default-src 'none'; frame-ancestors 'none'"


def test_keyword_names_become_directive_names() -> None:
    assert content_security_policy(script_src="'self'", connect_src="'self' wss:") == (
        "default-src 'none'; script-src 'self'; connect-src 'self' wss:; frame-ancestors 'none'"
    )


def test_overriding_default_src_keeps_one_default_src_first() -> None:
    policy = content_security_policy(default_src="'self'", img_src="data:")
    assert policy == "default-src 'self'; img-src data:; frame-ancestors 'none'"
    assert policy.count("default-src") == 1


def test_frame_ancestors_cannot_be_loosened() -> None:
    policy = content_security_policy(frame_ancestors="*")
    assert directives(policy)["frame-ancestors"] == "'none'"
    assert policy.count("frame-ancestors") == 1


@pytest.mark.parametrize("policy", [API_CSP, PAGE_CSP, DOCS_CSP], ids=["api", "page", "docs"])
def test_every_policy_forbids_framing_and_sets_a_default(policy: str) -> None:
    parsed = directives(policy)
    assert parsed["frame-ancestors"] == "'none'"
    assert "default-src" in parsed
    assert "*" not in policy


def test_page_csp_is_same_origin_without_inline_code() -> None:
    parsed = directives(PAGE_CSP)
    assert "'unsafe-inline'" not in PAGE_CSP
    assert "'unsafe-eval'" not in PAGE_CSP
    assert parsed["default-src"] == "'none'"
    for name in ("script-src", "style-src", "img-src", "connect-src", "form-action"):
        assert parsed[name] == "'self'", name
    assert parsed["base-uri"] == "'none'"


def test_docs_csp_allows_swaggers_inline_bootstrap_and_data_images() -> None:
    parsed = directives(DOCS_CSP)
    assert parsed["default-src"] == "'self'"
    assert parsed["script-src"] == "'self' 'unsafe-inline'"
    assert parsed["style-src"] == "'self' 'unsafe-inline'"
    assert parsed["img-src"] == "'self' data:"
    assert "'unsafe-eval'" not in DOCS_CSP
