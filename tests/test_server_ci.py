"""`tianci serve`'s 词牌 routes go the CLI's one way: the listing is `CiPu.listing`, the form of a
composition is `Composer.choose`, and a library error reaches the client with its message as written
and its param / allowed range in their fields."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from server_fixtures import build_world, open_world_cipu  # noqa: E402
from test_cipai import write_cipu  # noqa: E402
from test_compose import V0, V1  # noqa: E402  (variant 0 wants 仄 at character 1, variant 1 平)
from tianci.ci.cipai import CiPu  # noqa: E402
from tianci.ci.compose import Composer  # noqa: E402
from tianci.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("server-world"))


@pytest.fixture(scope="module")
def two_variants(world, tmp_path_factory):
    root = write_cipu(tmp_path_factory.mktemp("two-variants"), [(["测调"], ["cd"], "cediao", [V0, V1])])
    cp = CiPu.load(root, phon=world["phon"])
    with TestClient(create_app(world["run"], cipu=cp)) as c:
        yield c, cp


def test_compose_takes_the_variant_the_cli_takes(world, two_variants):
    """Guards the server choosing a form its own way (the default variant, via cp.form): an opening
    the default refuses was a 400 on /api/compose while `tianci compose` (Composer.choose) took the
    variant that admits it."""
    from tianci.checkpoint import load_run

    c, cp = two_variants
    cli = Composer(load_run(world["run"]).tokenizer, cp.phon, cp).choose("测调", None, "东", None)
    assert cli.form.variant == 1 and cli.note
    body = {"cipai": "测调", "start": "东", "seed": 3, "author": "某"}
    res = c.post("/api/compose", json={**body, "stream": False}).json()
    assert res["form"]["variant"] == 1 and res["note"] == cli.note and res["text"].startswith("东")
    r = c.post("/api/compose", json=body)
    assert r.status_code == 200 and '"variant": 1' in r.text.split("\n\n")[0]
    plain = c.post("/api/compose", json={"cipai": "测调", "start": "动", "stream": False}).json()
    assert plain["form"]["variant"] == 0 and plain["note"] == ""


def test_library_errors_are_rendered_not_edited(world, two_variants):
    """Guards the server rewording library errors (stripping CLI flags, prefixing, regex-guessing the
    param): the message is the library's own plus its API hint, param and allowed in their fields."""
    from tianci.checkpoint import load_run
    from tianci.ci.fixed import FixedCharsError

    c, cp = two_variants
    composer = Composer(load_run(world["run"]).tokenizer, cp.phon, cp)
    for body in ({"start": "东", "variant": 0}, {"acrostic": "东东东"}, {"start": "东东"}):
        with pytest.raises(FixedCharsError) as lib:
            composer.choose("测调", body.get("variant"), body.get("start"), body.get("acrostic"))
        r = c.post("/api/compose", json={"cipai": "测调", "stream": False, **body})
        e = r.json()["error"]
        assert r.status_code == lib.value.status == 400
        assert e["message"] == lib.value.render("api") and "--" not in e["message"]
        assert (e["param"], e["allowed"]) == (lib.value.param, lib.value.allowed)
    with pytest.raises(Exception) as lib:
        cp.form("测调", 5)
    e = c.get("/api/cipai/测调", params={"variant": 5}).json()["error"]
    assert e["message"] == lib.value.render("api") and e["param"] == "variant" and e["allowed"] == lib.value.allowed


def test_one_listing_for_cli_and_server(world):
    """Guards the 词牌 listing being built twice (server._listing beside CiPu.listing), so the server's
    rows, order or pinyin could drift from `tianci cipai --list`."""
    cp = open_world_cipu(world)
    with TestClient(create_app(world["run"], cipu=cp)) as c:
        data = c.get("/api/cipai").json()["data"]
    rows = [{**dataclasses.asdict(r), "aliases": list(r.aliases), "pinyin": list(r.pinyin), "form": None}
            for r in cp.listing()]
    assert data == rows and all(r["pinyin"] for r in data)
