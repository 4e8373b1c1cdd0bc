import numpy as np
import pickle

from raydm2.acquisition.mixing import combined_distance, nearest, unit
from raydm2.acquisition.knn import ExactIndex, build_ivf, default_ivf_params


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
    # Clustered data, like real embeddings; nprobe = nlist makes the shortlist exact, so the re-ranked
    # neighbours must equal brute force: this checks the shortlist/re-rank plumbing, not FAISS's recall.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    z = unit((centres[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 16))).astype(np.float32))
    ids = np.arange(4000) * 2 + 1
    exact_i, _ = ExactIndex(ids, z, 0.5).search(ids[:300], z[:300], 10)
    params = default_ivf_params(4000, 10, nlist=32, nprobe=32, shortlist_factor=8, train_sample=2000)
    ivf = pickle.loads(pickle.dumps(build_ivf(lambda: iter([(ids, z)]), 4000, params, 0.5, seed=0, round_=1)))
    got_i, got_d = ivf.search(ids[:300], z[:300], 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, exact_i)])
    assert recall > 0.99
    assert all(i not in row for i, row in zip(ids[:300], got_i))


def test_default_nprobe_grows_with_nlist_up_to_the_measured_cap():
    from raydm2.acquisition.knn import NPROBE_CAP

    probes = {n: default_ivf_params(n, 10, None, None, 8, 100_000) for n in (10_000, 200_000, 10**6, 10**8)}
    assert probes[10_000].nprobe == max(8, probes[10_000].nlist // 16) < NPROBE_CAP
    # nlist/16 would probe 111 lists at 2·10^5 and 250 at 10^6: every query would scan n/16 vectors.
    assert [probes[n].nprobe for n in (200_000, 10**6, 10**8)] == [NPROBE_CAP] * 3 == [32] * 3
    assert probes[10**6].nlist == 4000
    assert default_ivf_params(10**6, 10, None, 100, 8, 100_000).nprobe == 100  # a user's setting wins
