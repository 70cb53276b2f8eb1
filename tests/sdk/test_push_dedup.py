"""Dedup within what you can read, and no further: the bytes a push sends, counted at the proxy.

alice pushed the tiny base as `acme/llama-tiny` (private). Pushing the same files again, or a
teammate (bob) pushing them elsewhere in acme, sends no byte and costs one request (a negotiation
that commits at once). carol, outside acme, knows nothing of them: she sends every byte herself, then
commits.
"""

from __future__ import annotations

from .state import BASE, sha


def _push_calls(proxy) -> list[tuple[str, str, int | None]]:
    return [(s.method, s.path, s.status) for s in proxy.requests()]


def test_alice_repushing_her_base_sends_no_byte_in_one_request(seed, make_hub, proxy):
    first = seed.base()
    again = make_hub().push(seed.base_folder(), BASE, kind="model")
    assert (again.created, again.number, again.digest) == (False, first.number, first.digest)
    assert _push_calls(proxy) == [("POST", f"/api/v1/repos/{BASE}/uploads", 200)]


def test_a_teammate_pushing_the_same_base_sends_no_byte(seed, bob, open_hub, proxy, tmp_path):
    seed.base()
    copy = open_hub(url=proxy.url, token=bob.token, cache_dir=tmp_path / "bob").push(
        seed.base_folder(), "acme/llama-copy", kind="model")
    assert (copy.repo, copy.number, copy.created) == ("acme/llama-copy", 1, True)
    assert _push_calls(proxy) == [("POST", "/api/v1/repos/acme/llama-copy/uploads", 201)]


def test_an_outsider_sends_every_byte_of_the_same_base(seed, carol, open_hub, proxy, tmp_path):
    base = seed.base()
    hub = open_hub(url=proxy.url, token=carol.token, cache_dir=tmp_path / "carol")
    mine = hub.push(seed.base_folder(), "carol/llama", kind="model")
    assert [(m, path.rsplit("/", 1)[1]) for m, path, _ in _push_calls(proxy) if m == "POST"] == [
        ("POST", "uploads"), ("POST", "versions")]  # missing blobs: the negotiation does not commit
    puts = proxy.requests("PUT")
    sent = {p.path.rsplit("/", 1)[1]: p.body for p in puts}
    folder = seed.base_folder()
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert sent == {sha(data): data for data in files.values()}  # each blob once, its bytes verified by the hub
    assert all(p.status == 201 for p in puts)
    assert mine.digest == base.digest  # the same files: the same version, hers to read
    assert hub.pull("carol/llama").joinpath("config.json").read_bytes() == files["config.json"]
