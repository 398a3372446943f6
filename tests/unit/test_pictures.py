"""Pictures of the image DAG: the read model, and the Graphviz DOT checked by Graphviz's own
parser (`dot -Tjson0`). graphviz is a test dependency (.ci/setup installs it): without `dot`
these tests fail, they are never skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import UnknownVm
from snapledger.domain.images import OwnerClass
from snapledger.projections.pictures import image_dag_dot, image_picture

VM = "vm"
BASE = "/images/base.qcow2"


def img(name: str) -> str:
    return f"/images/{name}"


def parse_dot(text: str) -> dict[str, Any]:
    """Graphviz's own reading of the DOT text: {"nodes": {name: attrs}, "edges": [(tail, head, attrs)]}."""
    dot = shutil.which("dot")
    assert dot is not None, "graphviz's dot is needed for these tests: run .ci/setup (apt-get install graphviz)"
    done = subprocess.run([dot, "-Tjson0"], input=text, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    graph = json.loads(done.stdout)
    objects = graph.get("objects", [])
    nodes = {o["name"]: o for o in objects}
    names = [o["name"] for o in objects]
    edges = [(names[e["tail"]], names[e["head"]], e) for e in graph.get("edges", [])]
    return {"graph": graph, "nodes": nodes, "edges": edges}


def diagram2() -> Snapledger:
    storage = SimulatedStorage()
    storage.make_image(BASE, 16 * CLUSTER, {0: 1})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt(VM, {"vda": BASE})
    for name in ("snap1", "snap2", "snap3"):
        ledger.snapshot(VM, name)
    ledger.revert(VM, "snap1")
    return ledger


def test_the_picture_of_diagram2() -> None:
    picture = image_picture(diagram2().refresh(), VM)
    assert picture.vms == (VM,)
    assert picture.roots() == [BASE]
    assert sorted(picture.edges()) == [
        (img("base.snap1"), BASE),
        (img("base.snap1-1"), BASE),
        (img("base.snap2"), img("base.snap1")),
    ]
    base = picture.images[BASE]
    assert base.owner is OwnerClass.ADOPTED and base.branch_point and base.branches == 2
    assert base.freezes == ((VM, "snap1", "vda"),)
    assert picture.images[img("base.snap1-1")].active_for == ((VM, "vda"),)
    assert all(i.needed for i in picture.images.values())
    with pytest.raises(UnknownVm):
        image_picture(diagram2().refresh(), "nope")


def test_dot_of_diagram2_as_graphviz_reads_it() -> None:
    dot = parse_dot(image_dag_dot(diagram2().refresh(), VM))
    assert set(dot["nodes"]) == {BASE, img("base.snap1"), img("base.snap2"), img("base.snap1-1")}
    assert sorted((tail, head) for tail, head, _ in dot["edges"]) == [
        (img("base.snap1"), BASE),
        (img("base.snap1-1"), BASE),
        (img("base.snap2"), img("base.snap1")),
    ]
    assert dot["graph"]["rankdir"] == "RL"
    labels = {name: node["label"] for name, node in dot["nodes"].items()}
    assert "<b>base.qcow2</b>" in labels[BASE]
    assert "adopted" in labels[BASE] and "freezes snap1" in labels[BASE]
    assert "managed" in labels[img("base.snap2")] and "freezes snap3" in labels[img("base.snap2")]
    assert "active vda (present)" in labels[img("base.snap1-1")]
    assert {name: node["owner"] for name, node in dot["nodes"].items()} == {
        BASE: "adopted",
        img("base.snap1"): "managed",
        img("base.snap2"): "managed",
        img("base.snap1-1"): "managed",
    }
    active = dot["nodes"][img("base.snap1-1")]
    assert active["penwidth"] == "3" and active["color"] == "#1a56db"
    assert all("penwidth" not in node for name, node in dot["nodes"].items() if name != img("base.snap1-1"))
    assert not any("dashed" in node["style"] for node in dot["nodes"].values())


def test_detached_and_unneeded_images_are_dashed() -> None:
    ledger = diagram2()
    storage = ledger.storage
    assert isinstance(storage, SimulatedStorage)
    own = img("own.qcow2")
    storage.make_image(own, 16 * CLUSTER, {3: 3})
    ledger.swap_disk(VM, "vda", own)  # base.snap1-1 is now detached
    dot = parse_dot(image_dag_dot(ledger.refresh(), VM))
    detached = dot["nodes"][img("base.snap1-1")]
    assert "dashed" in detached["style"] and "detached" in detached["label"]
    edge = next(attrs for tail, _, attrs in dot["edges"] if tail == img("base.snap1-1"))
    assert edge["style"] == "dashed"
    assert dot["nodes"][own]["penwidth"] == "3" and dot["nodes"][own]["owner"] == "adopted"
    assert "dashed" not in dot["nodes"][img("base.snap1")]["style"]


def test_whole_ledger_dot_names_each_vm_and_greys_shared_templates() -> None:
    storage = SimulatedStorage()
    template = img("template.qcow2")
    storage.make_image(template, 16 * CLUSTER, {0: 1})
    for name in ("a", "b"):
        storage.make_image(img(f"{name}.qcow2"), 16 * CLUSTER, backing=template)
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": img("a.qcow2")})
    ledger.adopt("b", {"vda": img("b.qcow2")})
    ledger.snapshot("a", "s1")
    dot = parse_dot(image_dag_dot(ledger.refresh()))
    assert set(dot["nodes"]) == {template, img("a.qcow2"), img("b.qcow2"), img("a.s1")}
    shared = dot["nodes"][template]
    assert shared["owner"] == "read-only" and "shared: a, b" in shared["label"]
    assert shared["fillcolor"] == "#e3e3e3"
    assert "freezes a/s1" in dot["nodes"][img("a.qcow2")]["label"]
    assert "active a/vda (present)" in dot["nodes"][img("a.s1")]["label"]
    only_b = parse_dot(image_dag_dot(ledger.refresh(), "b"))
    assert set(only_b["nodes"]) == {template, img("b.qcow2")}


def test_dot_quotes_any_path() -> None:
    storage = SimulatedStorage()
    odd = '/images/a "quoted" <&> name.qcow2'
    storage.make_image(odd, 16 * CLUSTER, {0: 1})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt(VM, {"vda": odd})
    ledger.snapshot(VM, "s1")
    dot = parse_dot(image_dag_dot(ledger.refresh(), VM))
    assert odd in dot["nodes"]
    assert "a &quot;quoted&quot; &lt;&amp;&gt; name.qcow2" in dot["nodes"][odd]["label"]
    assert [(tail, head) for tail, head, _ in dot["edges"]] == [('/images/a "quoted" <&> name.s1', odd)]
