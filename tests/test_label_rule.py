"""A label that is refused says what a label is (issue 20): the REST error and the explorer's label input."""

from pathlib import Path
from urllib.parse import quote

from appliance.archive import LABEL, LABEL_RULE, label_problem

from .synth import ct_instance

EXPLORER = Path(__file__).parent.parent / "appliance" / "web" / "static" / "explorer.js"


def test_label_problem_names_what_is_wrong_and_the_rule():
    assert label_problem("Session3-chest") is None and label_problem("a_" * 32) is None
    assert label_problem("Session 3") == f"a space is not accepted; a label is {LABEL_RULE}"
    assert label_problem("Thorax-é") == f"'é' is not accepted; a label is {LABEL_RULE}"
    assert label_problem("a/b") == f"'/' is not accepted; a label is {LABEL_RULE}"
    assert label_problem("") == f"it is empty; a label is {LABEL_RULE}"
    assert label_problem("x" * 65) == f"it has 65 characters; a label is {LABEL_RULE}"
    for good, bad in (("A-z_09", "A.z"), ("x" * 64, "x" * 65)):
        assert LABEL.fullmatch(good) and label_problem(good) is None
        assert not LABEL.fullmatch(bad) and label_problem(bad) is not None
    assert "1 to 64" in LABEL_RULE and "'-' or '_'" in LABEL_RULE


def test_refused_label_says_what_a_label_is(make_server):
    srv = make_server()
    study = srv.post("/instances", ct_instance(rows=16, cols=16)).json()["ParentStudy"]
    for label, wrong in (("Session 3", "a space is not accepted"), ("Thorax-é", "'é' is not accepted"),
                         ("a/b", "'/' is not accepted"), ("x" * 70, "it has 70 characters")):
        for method in ("PUT", "GET", "DELETE"):
            r = srv.request(method, f"/studies/{study}/labels/{quote(label, safe='')}", "" if method == "PUT" else None)
            assert r.status == 400, (method, label, r.status, r.body[:200])
            body = r.json()
            assert body["Message"] == f"invalid label {label!r}: {wrong}; a label is {LABEL_RULE}", body
        r = srv.request("PUT", f"/pipacs/published-labels/{quote(label, safe='')}", "")
        assert r.status == 400 and r.json()["Message"].endswith(f"a label is {LABEL_RULE}")
        r = srv.get(f"/collections/{quote(label, safe='')}/bundle")
        assert r.status == 400 and r.json()["Message"] == f"invalid collection {label!r}: {wrong}; a label is {LABEL_RULE}"
    assert srv.request("PUT", f"/studies/{study}/labels/Session3-chest", "").status == 200
    assert srv.get_json(f"/studies/{study}/labels") == ["Session3-chest"]
    r = srv.get("/cases?collection=Session%203")
    assert r.status == 400 and LABEL_RULE in r.json()["Message"]


def test_explorer_label_input_says_the_same_rule():
    """The explorer's label input checks the server's pattern and shows the rule (its title, and
    the error line when the browser finds the value invalid), word for word as the server says it."""
    js = EXPLORER.read_text()
    start = js.index('id: "label-input"')
    field = js[js.rindex("const labelRule", 0, start):js.index("});", start)]
    assert f'const labelRule = "{LABEL_RULE}"' in field
    assert f'pattern: "{LABEL.pattern}"' in field and "maxlength: 64" in field
    assert "title: `A label is ${labelRule}`" in field and "oninvalid:" in field and "${labelRule}" in field
