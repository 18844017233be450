from pathlib import Path

from qiao import problems

DOC = Path(__file__).resolve().parents[1] / "docs" / "problems.md"


def test_every_problem_type_is_documented_and_unique() -> None:
    uris = [p.uri for p in problems.ALL]
    assert len(uris) == len(set(uris))
    text = DOC.read_text()
    for p in problems.ALL:
        assert f"`{p.uri}` | {p.status} |" in text, f"{p.uri} missing from docs/problems.md"
        assert p.side in ("client", "consumer", "provider", "hub")
        assert 400 <= p.status < 600


def test_problem_body() -> None:
    p = problems.Problem(problems.NO_AGREEMENT, "no", {"extra": 1})
    assert p.to_dict("/r1/x") == {
        "type": "urn:qiao:problem:client:no-agreement",
        "title": problems.NO_AGREEMENT.title,
        "status": 403,
        "detail": "no",
        "instance": "/r1/x",
        "extra": 1,
    }


def test_every_problem_body_matches_the_schema_the_openapi_documents_declare() -> None:
    import jsonschema

    for kind in problems.ALL:
        body = problems.Problem(kind, "why", {"errors": []}).to_dict("/somewhere")
        jsonschema.validate(body, problems.PROBLEM_SCHEMA)
    with_no_title = {"type": problems.NOT_FOUND.uri, "status": 404}
    try:
        jsonschema.validate(with_no_title, problems.PROBLEM_SCHEMA)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a problem without its title passed the schema")
