import numpy as np
import pickle

from raydm2.acquisition.mixing import combined_distance, nearest, unit
from raydm2.acquisition.knn import (ExactIndex, KnnSettings, ShardedIndex, build_index, build_ivf,
                                    ivf_bytes, ivf_params, merge_nearest, shard_of)


def test_combined_distance_matches_its_definition():
    rng = np.random.default_rng(1)
    q, c = unit(rng.normal(size=(3, 8))), unit(rng.normal(size=(4, 8)))
    got = combined_distance(q, c, 0.3)
    diff = q[:, None, :].astype(np.float64) - c[None, :, :]
    want = (0.3 * np.sqrt((diff ** 2).sum(-1)) + 0.7 * np.abs(diff).sum(-1)) / 8
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_exact_excludes_self_sorts_and_breaks_ties_by_id():
    z = unit(np.array([[1, 0], [1, 0], [0, 1], [1, 0.1]], np.float32))
    ids = np.array([10, 5, 7, 3])
    nbr, d = ExactIndex(ids, z, 0.5).search(ids, z, 10)
    assert nbr.shape == (4, 3)  # k larger than the pool: every other item
    assert nbr[0].tolist() == [5, 3, 7] and nbr[1].tolist() == [10, 3, 7]  # 10 and 5 coincide: tie by id
    assert all(i not in row for i, row in zip(ids, nbr))
    assert (np.diff(d, axis=1) >= 0).all()


def test_nearest_equals_a_full_sort_by_distance_then_id_under_many_ties():
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 4, size=(50, 40)).astype(np.float64)  # 4 values over 40 columns: ties everywhere
    cand_ids = rng.permutation(1000)[:40]
    query_ids = np.concatenate([cand_ids[:25], 2000 + np.arange(25)])  # half the queries are candidates too
    got_i, got_d = nearest(dist, cand_ids, query_ids, 7)
    for r, q in enumerate(query_ids):
        row = np.where(cand_ids == q, np.inf, dist[r])
        want = np.lexsort((cand_ids, row))[:7]
        assert got_i[r].tolist() == cand_ids[want].tolist()
        assert got_d[r].tolist() == row[want].tolist()


def test_ivf_with_exhaustive_probe_matches_exact():
    # Clustered data, like real embeddings; nprobe = nlist scans every list, so only the coarse fast-scan cut and
    # the L2 cut stand between the answer and brute force: this checks the re-rank plumbing, not the probing.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    z = unit((centres[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 16))).astype(np.float32))
    ids = np.arange(4000) * 2 + 1
    exact_i, _ = ExactIndex(ids, z, 0.5).search(ids[:300], z[:300], 10)
    params = ivf_params(4000, KnnSettings(mode="ivf", nlist=32, nprobe=32, shortlist_factor=8, train_sample=2000))
    ivf = pickle.loads(pickle.dumps(build_ivf(lambda: iter([(ids, z)]), params, 0.5, seed=0, round_=1)))
    got_i, got_d = ivf.search(ids[:300], z[:300], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, exact_i)])
    assert recall > 0.99
    assert all(i not in row for i, row in zip(ids[:300], got_i))


def test_ivf_answers_each_query_the_same_in_any_batch_and_reranks_by_exact_distances():
    z = _clustered(8000, dim=24, seed=4)
    ids = np.arange(8000) * 7 + 3
    index = build_index(lambda: iter([(ids, z)]), 8000, KnnSettings(mode="ivf"), seed=2, round_=1)
    assert index.params.nprobe < index.params.nlist and index.params.scan == 4 * index.params.shortlist
    together = index.search(ids[:300], z[:300], 10)
    alone = [index.search(ids[r:r + 1], z[r:r + 1], 10) for r in range(300)]
    assert np.array_equal(together[0], np.concatenate([a[0] for a in alone]))
    assert np.array_equal(together[1], np.concatenate([a[1] for a in alone]))
    # The distances returned are exact d_c, whatever the fast-scan codes approximated.
    rows = {i: r for r, i in enumerate(ids)}
    for r in range(0, 300, 37):
        want = combined_distance(z[r:r + 1], z[[rows[i] for i in together[0][r]]], 0.5)[0]
        np.testing.assert_array_equal(together[1][r], want)


def test_ivf_answers_do_not_depend_on_the_order_the_vectors_arrived_in():
    # The engines fill an index from batches in different orders. A short scan makes the coarse fast-scan cut
    # decide the answers, and its ties must not go by arrival order.
    z = _clustered(12_000, dim=16, seed=6)
    ids = np.arange(12_000) * 3
    settings = KnnSettings(mode="ivf", shortlist_factor=4, scan_factor=1)
    order = np.random.default_rng(0).permutation(12_000)
    in_order = build_index(lambda: iter([(ids[:5000], z[:5000]), (ids[5000:], z[5000:])]), 12_000, settings, 1, 1)
    shuffled = build_index(lambda: iter([(ids[order[s:s + 997]], z[order[s:s + 997]]) for s in range(0, 12_000, 997)]),
                           12_000, settings, 1, 1)
    a, b = in_order.search(ids[:2000], z[:2000], 10), shuffled.search(ids[:2000], z[:2000], 10)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _clustered(n, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    return unit((centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32))


def test_merge_nearest_is_a_sort_by_distance_then_id_in_any_order():
    rng = np.random.default_rng(5)
    parts = [(rng.permutation(100)[:6].reshape(1, 6).repeat(3, 0), rng.integers(0, 3, size=(3, 6)).astype(float))
             for _ in range(3)]
    parts[2][0][0, :2] = -1  # a shard short of candidates
    parts[2][1][0, :2] = np.inf
    forward = backward = None
    for p in parts:
        forward = merge_nearest(forward, p, 5)
    for p in reversed(parts):
        backward = merge_nearest(backward, p, 5)
    ids, dist = (np.concatenate(x, axis=1) for x in zip(*parts))
    for r in range(3):
        want = np.lexsort((ids[r], dist[r]))[:5]
        assert forward[0][r].tolist() == backward[0][r].tolist() == ids[r, want].tolist()
        assert forward[1][r].tolist() == dist[r, want].tolist()


def test_shards_split_the_vectors_by_id_hash_and_search_at_least_as_well_as_one_index():
    z = _clustered(6000)
    ids = np.arange(6000) * 3
    one = build_index(lambda: iter([(ids, z)]), 6000, KnnSettings(mode="ivf", nprobe=4, shortlist_factor=4), seed=1, round_=2)
    # Too many bytes for one actor: the shard count comes from the size estimate.
    settings = KnnSettings(mode="ivf", nprobe=4, shortlist_factor=4, index_bytes_per_actor=ivf_bytes(6000, 16) // 3 + 1)
    sharded = pickle.loads(pickle.dumps(build_index(lambda: iter([(ids, z)]), 6000, settings, seed=1, round_=2)))
    assert isinstance(sharded, ShardedIndex) and len(sharded.shards) == 3
    assert sum(sharded.describe()["shard_vectors"]) == 6000 and min(sharded.describe()["shard_vectors"]) > 1500
    owner = shard_of(ids, 3, 1, 2)
    for s, shard in enumerate(sharded.shards):
        assert len(shard) == (owner == s).sum()
        assert shard.ids.tolist() == ids[owner == s].tolist()
    probes = sharded.shards[0].probe(z[:500])  # what the first shard's searcher hands on to the others
    for shard in sharded.shards:
        assert all((a == b).all() for a, b in zip(shard.search(ids[:500], z[:500], 10, probes),
                                                  shard.search(ids[:500], z[:500], 10)))
    one_i, one_d = one.search(ids[:500], z[:500], 10)
    got_i, got_d = sharded.search(ids[:500], z[:500], 10)
    # Every shard probes the same lists with the same scan length over fewer vectors, so its fast-scan candidates
    # include the single index's from that shard; only the L2 cut to each shard's shortlist could drop one, which
    # it does not here: no neighbour is farther than the single index's at the same rank, and some are nearer.
    assert (got_d <= one_d + 1e-12).all() and (got_d < one_d - 1e-12).any()
    exact_i, _ = ExactIndex(ids, z, 0.5).search(ids[:500], z[:500], 10)
    recall = lambda found: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_i)])  # noqa: E731
    assert recall(got_i) >= recall(one_i)
    assert all(i not in row for i, row in zip(ids[:500], got_i))


def test_shards_that_hold_nothing_near_a_query_answer_with_missing_entries():
    z = _clustered(3000)
    ids = np.arange(3000) * 2
    # 600 shards of about 5 vectors, some empty: most shards have no candidate for most queries. Every shard's
    # shortlist holds all its vectors, so the merged answer is the exact one.
    sharded = build_index(lambda: iter([(ids, z)]), 3000, KnnSettings(mode="ivf", shards=600, nprobe=76), 0, 1)
    assert min(sharded.describe()["shard_vectors"]) == 0
    got_i, got_d = sharded.search(ids[:40], z[:40], 10)
    for row in range(40):  # one query at a time, as the end of a Ray batch may be
        one = sharded.search(ids[row:row + 1], z[row:row + 1], 10)
        assert one[0][0].tolist() == got_i[row].tolist()
    want_i, want_d = ExactIndex(ids, z, 0.5).search(ids[:40], z[:40], 10)
    assert got_i.tolist() == want_i.tolist()
    np.testing.assert_allclose(got_d, want_d, rtol=1e-9)


def test_default_nprobe_grows_with_nlist_up_to_the_measured_cap():
    from raydm2.acquisition.knn import NPROBE_CAP

    probes = {n: ivf_params(n, KnnSettings()) for n in (10_000, 200_000, 10**6, 10**8)}
    assert [probes[n].nprobe for n in (10_000, 200_000)] == [max(8, probes[n].nlist // 16) for n in (10_000, 200_000)]
    assert probes[200_000].nprobe < NPROBE_CAP
    # nlist/16 would probe 250 lists at 10^6 and 2,500 at 10^8: every query would scan n/16 vectors.
    assert [probes[n].nprobe for n in (10**6, 10**8)] == [NPROBE_CAP] * 2 == [128] * 2
    assert probes[10**6].nlist == 4000
    assert (probes[10**6].shortlist, probes[10**6].scan) == (160, 640)
    assert ivf_params(10**6, KnnSettings(nprobe=100)).nprobe == 100  # a user's setting wins
