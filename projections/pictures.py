"""Pictures of the image DAG: the read model behind `tree --images` and `export --format dot`.

Nodes are images, edges point from an image to its backing file, as in the RFC's diagrams
(summarised in docs/semantics.md, "Where it comes from: the libvirt RFC"). Everything an image is marked
with (owner class, needed or not, why) comes from the ImageDag; this module only arranges it.
Pure: a function of a LedgerView.
"""

from __future__ import annotations

import html
import posixpath
from dataclasses import dataclass

from snapledger.domain.images import OwnerClass

from .dag import ImageDag, Need
from .view import LedgerView


@dataclass(frozen=True)
class PictureImage:
    path: str
    owner: OwnerClass
    backing: str | None  # the backing file, None at the bottom of a chain
    vms: tuple[str, ...]  # the VMs using it
    freezes: tuple[tuple[str, str, str], ...]  # (vm, snapshot, disk) it holds
    active_for: tuple[tuple[str, str], ...]  # (vm, disk) it is the present of
    detached: bool
    needs: tuple[Need, ...]
    children: tuple[str, ...]  # images of the picture backed by it
    branches: int  # how many of those children need to stay

    @property
    def needed(self) -> bool:
        return bool(self.needs)

    @property
    def branch_point(self) -> bool:
        return self.branches > 1


@dataclass(frozen=True)
class ImagePicture:
    vms: tuple[str, ...]  # the VMs drawn
    images: dict[str, PictureImage]  # by path, sorted
    whole_ledger: bool = False  # every VM of the ledger, rather than one named VM

    def roots(self) -> list[str]:
        """Images drawn without their backing file: the bottoms of the chains."""
        return [p for p, i in self.images.items() if i.backing not in self.images]

    def edges(self) -> list[tuple[str, str]]:
        """(image, its backing file) for every backing pointer inside the picture."""
        return [
            (p, i.backing) for p, i in self.images.items() if i.backing is not None and i.backing in self.images
        ]


def image_picture(view: LedgerView, vm: str | None = None) -> ImagePicture:
    """The image DAG of one VM (every image its ledger holds), or of the whole ledger."""
    if vm is not None:
        view.vm(vm)  # an unknown name is refused
    names = (vm,) if vm is not None else tuple(sorted(view.vms))
    # one VM: through its home host's eyes (scope.py); the whole ledger: every image at once
    dag = ImageDag(view, home=view.vms[vm].home if vm is not None else None)
    paths = sorted({path for name in names for path in view.vms[name].images})
    freezes: dict[str, list[tuple[str, str, str]]] = {}
    active: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        machine = view.vms[name]
        for snap in sorted(machine.snapshots.values(), key=lambda s: (s.created, s.name)):
            for disk, path in sorted(snap.disks.items()):
                freezes.setdefault(path, []).append((name, snap.name, disk))
        for disk, path in sorted(machine.disks.items()):
            active.setdefault(path, []).append((name, disk))
    chosen = set(paths)
    images = {}
    for path in paths:
        node = dag.nodes[path]
        children = tuple(c for c in dag.children.get(path, []) if c in chosen)
        images[path] = PictureImage(
            path=path,
            owner=node.owner,
            backing=node.facts.backing,
            vms=node.vms,
            freezes=tuple(freezes.get(path, ())),
            active_for=tuple(active.get(path, ())),
            detached=node.detached,
            needs=tuple(node.needs),
            children=children,
            branches=len([c for c in children if dag.nodes[c].needed]),
        )
    return ImagePicture(names, images, whole_ledger=vm is None)


# ---- Graphviz DOT ----------------------------------------------------------------------------

FILL = {
    OwnerClass.MANAGED: "#ffffff",
    OwnerClass.ADOPTED: "#fff3c4",
    OwnerClass.READ_ONLY: "#e3e3e3",
}
ACTIVE_COLOR = "#1a56db"
LEGEND = (
    "white: managed · yellow: adopted · grey: read-only · "
    "thick blue: active (the present) · dashed: detached or needed by nothing"
)


def dot_string(text: str) -> str:
    """A DOT double-quoted string (an ID or an escString attribute) standing for `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _who(vm: str, thing: str, qualify: bool) -> str:
    return f"{vm}/{thing}" if qualify else thing


def image_lines(image: PictureImage, qualify: bool) -> list[str]:
    """What an image is marked with, one line each, after its file name."""
    lines = [image.owner.value]
    if image.owner is OwnerClass.READ_ONLY and len(image.vms) > 1:
        lines[0] += f" (shared: {', '.join(image.vms)})"
    if image.freezes:
        lines.append("freezes " + ", ".join(_who(vm, snap, qualify) for vm, snap, _ in image.freezes))
    if image.active_for:
        disks = ", ".join(_who(vm, disk, qualify) for vm, disk in image.active_for)
        lines.append(f"active {disks} (present)")
    if image.branch_point:
        lines.append(f"branch point: {image.branches} histories")
    if image.detached:
        lines.append("detached")
    if not image.needed:
        lines.append("needed by nothing")
    return lines


def _label(image: PictureImage, qualify: bool) -> str:
    name = html.escape(posixpath.basename(image.path) or image.path)
    rest = "".join(
        f'<br/><font point-size="10">{html.escape(line)}</font>' for line in image_lines(image, qualify)
    )
    return f"<<b>{name}</b>{rest}>"


def to_dot(picture: ImagePicture) -> str:
    """Graphviz DOT of the picture: one node per image (ID: its path), one edge per backing
    pointer (image -> backing file). Laid out right to left, so chains read like the RFC's
    diagrams: the bottom image on the left, the present on the right."""
    qualify = len(picture.vms) > 1
    title = "images of every VM" if picture.whole_ledger else f"images of {picture.vms[0]}"
    out = [
        f"// snapledger: {title}. Nodes are images; an edge points from an image to its backing file.",
        "digraph snapledger {",
        "  graph [rankdir=RL, labelloc=t, fontname=Helvetica, fontsize=12, nodesep=0.35, ranksep=0.5,",
        f"         label={dot_string(f'{title} (arrows point to the backing file)')}];",
        "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=12, color=\"#555555\"];",
        "  edge [color=\"#555555\", arrowsize=0.7];",
    ]
    for path, image in picture.images.items():
        style = "rounded,filled,dashed" if image.detached or not image.needed else "rounded,filled"
        attrs = [
            f"label={_label(image, qualify)}",
            f"tooltip={dot_string(path)}",
            f"fillcolor={dot_string(FILL[image.owner])}",
            f"style={dot_string(style)}",
            f"owner={dot_string(image.owner.value)}",
        ]
        if image.active_for:
            attrs += [f"color={dot_string(ACTIVE_COLOR)}", "penwidth=3"]
        out.append(f"  {dot_string(path)} [{', '.join(attrs)}];")
    for child, backing in picture.edges():
        image = picture.images[child]
        dashed = ' [style="dashed"]' if image.detached or not image.needed else ""
        out.append(f"  {dot_string(child)} -> {dot_string(backing)}{dashed};")
    out.append(f"  // {LEGEND}")
    out.append("}")
    return "\n".join(out) + "\n"


def image_dag_dot(view: LedgerView, vm: str | None = None) -> str:
    return to_dot(image_picture(view, vm))
