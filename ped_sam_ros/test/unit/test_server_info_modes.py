"""A server's ``info`` lists every mode it serves, the k<N> modes between exact and paper included."""

from helpers import TINY_B, TINY_H
from ped_sam_ros.core.model import get_geometry, parse_mode
from ped_sam_ros.core.service import ServerInfo


def test_info_lists_every_mode_with_its_blocks():
    for spec in (TINY_B, TINY_H):
        g = get_geometry(spec)
        info = ServerInfo.describe(g, "srv", "w.pth")
        assert info.modes == ("exact", "k2", "k3", "paper")
        assert set(info.remote_blocks) == set(info.modes)
        for mode in info.modes:
            assert parse_mode(mode, g) == mode  # canonical names, as requests carry them
            assert info.remote_blocks[mode] == g.remote_blocks(mode)
        # each k offloads one more group: the servers' blocks grow from exact to paper
        sizes = [len(info.remote_blocks[m]) for m in info.modes]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
        assert ServerInfo.from_header(info.to_header()) == info
