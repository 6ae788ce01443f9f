# ALSH hashing kernels (included by _kernels.pyx). The numpy-facing API, with validation, is
# dreidel/hashing.py: call that, not these. Every name here starts with hash_/simhash_/dwta_/bucket_.
#
# * simhash_pack_signs: K-bit codes from projections, code = sum_k [p_k > 0] << k.
# * simhash_fast_project: the structured projection H D_r pad(x) (unnormalised Walsh-Hadamard),
#   a chosen subset of its coordinates: O(n log n) per row instead of O(n * bits).
# * dwta_hash: densified winner-take-all (SLIDE): per bin the position of the largest non-zero
#   coordinate; empty bins copy the value of a bin found by probing with a universal hash.
# * bucket_build / bucket_query_* / bucket_votes: L tables of CSR-like buckets built by counting
#   sort, and batched lookups deduplicated with per-thread stamp arrays.
# * bucket_scatter_columns / bucket_gather_columns / bucket_add_rows / bucket_zero_rows: the
#   active-set moves of the sparse layer.
#
# Work is split by rows (or tables) only, never by thread count, and the only reduction
# (bucket_votes) sums integers, so results are identical for any number of threads.
cimport cython
from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, calloc, free, qsort
from libc.string cimport memset

ctypedef fused hash_real:
    float
    double


cdef void hash_fwht(hash_real* a, Py_ssize_t n) noexcept nogil:
    """Unnormalised in-place Walsh-Hadamard transform (Sylvester order), n a power of two."""
    cdef Py_ssize_t h = 1, i, j
    cdef hash_real u, v
    while h < n:
        i = 0
        while i < n:
            for j in range(i, i + h):
                u = a[j]
                v = a[j + h]
                a[j] = u + v
                a[j + h] = u - v
            i += 2 * h
        h *= 2


cdef int hash_cmp_int(const void* a, const void* b) noexcept nogil:
    cdef int x = (<const int*>a)[0], y = (<const int*>b)[0]
    return (x > y) - (x < y)


def simhash_pack_signs(const hash_real[:, ::1] proj, long long[:, ::1] codes, int bits,
                       int nthreads):
    """codes[b, l] = sum_k [proj[b, l*bits + k] > 0] << k  (proj has >= L*bits columns)."""
    cdef Py_ssize_t B = proj.shape[0], L = codes.shape[1], b, l, k
    cdef long long c
    if B == 0:
        return
    with nogil:
        for b in prange(B, num_threads=nthreads, schedule="static"):
            for l in range(L):
                c = 0
                for k in range(bits):
                    if proj[b, l * bits + k] > 0:
                        c = c | ((<long long>1) << k)
                codes[b, l] = c


def simhash_fast_project(const hash_real[:, ::1] x, const hash_real[:, ::1] signs,
                         const long long[::1] coords, hash_real[:, ::1] out, int nthreads):
    """out[b, p] = (H D_r pad(x_b))[coords[p]] with r = p // n, H the unnormalised WHT of size
    n = signs.shape[1] >= x.shape[1], D_r = diag(signs[r])."""
    cdef Py_ssize_t B = x.shape[0], d = x.shape[1], R = signs.shape[0], n = signs.shape[1]
    cdef Py_ssize_t P = out.shape[1], b, r, j, p
    cdef hash_real* bufs
    cdef hash_real* buf
    if B == 0:
        return
    bufs = <hash_real*>malloc(nthreads * n * sizeof(hash_real))
    if bufs == NULL:
        raise MemoryError()
    with nogil, parallel(num_threads=nthreads):
        for b in prange(B, schedule="static"):
            buf = bufs + threadid() * n
            for r in range(R):
                if r * n >= P:
                    break
                for j in range(d):
                    buf[j] = x[b, j] * signs[r, j]
                for j in range(d, n):
                    buf[j] = 0
                hash_fwht(buf, n)
                for p in range(r * n, min(P, r * n + n)):
                    out[b, p] = buf[coords[p]]
    free(bufs)


def simhash_fast_codes(const hash_real[:, ::1] x, const hash_real[:, ::1] signs,
                       const long long[::1] coords, long long[:, ::1] codes, int bits,
                       int nthreads):
    """simhash_fast_project fused with simhash_pack_signs: codes (B, L) without materialising
    the B x (L * bits) projections. Projection p = l * bits + k is bit k of code l."""
    cdef Py_ssize_t B = x.shape[0], d = x.shape[1], R = signs.shape[0], n = signs.shape[1]
    cdef Py_ssize_t L = codes.shape[1], P = L * bits, b, r, j, p
    cdef hash_real* bufs
    cdef hash_real* buf
    if B == 0:
        return
    bufs = <hash_real*>malloc(nthreads * n * sizeof(hash_real))
    if bufs == NULL:
        raise MemoryError()
    with nogil, parallel(num_threads=nthreads):
        for b in prange(B, schedule="static"):
            buf = bufs + threadid() * n
            for j in range(L):
                codes[b, j] = 0
            for r in range(R):
                if r * n >= P:
                    break
                for j in range(d):
                    buf[j] = x[b, j] * signs[r, j]
                for j in range(d, n):
                    buf[j] = 0
                hash_fwht(buf, n)
                for p in range(r * n, min(P, r * n + n)):
                    if buf[coords[p]] > 0:
                        codes[b, p // bits] = codes[b, p // bits] | ((<long long>1) << (p % bits))
    free(bufs)


def dwta_hash(const hash_real[:, ::1] x, const long long[:, ::1] bins, long long[:, ::1] out,
              unsigned long long probe_a, unsigned long long probe_b, int max_probes,
              int nthreads):
    """Densified winner-take-all hashes, out (B, H) for bins (H, S) of coordinate indices.

    raw[i] = position s of the largest non-zero x[bins[i, s]] (first one on ties), -1 if all are
    zero. An empty bin i takes raw[j] of the first non-empty j among the probes
    j_t = mix(a * ((i + 1) * 64 + t) + b) mod H, t = 1..max_probes (0 if none), all mod 2^64,
    mix the splitmix64 finaliser (a linear hash alone leaves consecutive probes correlated).
    """
    cdef Py_ssize_t B = x.shape[0], H = bins.shape[0], S = bins.shape[1], b, i, s, j
    cdef long long* raws
    cdef long long* raw
    cdef long long best, val
    cdef hash_real v, bestv
    cdef unsigned long long u, h
    cdef int t
    if B == 0 or H == 0:
        return
    raws = <long long*>malloc(nthreads * H * sizeof(long long))
    if raws == NULL:
        raise MemoryError()
    with nogil, parallel(num_threads=nthreads):
        for b in prange(B, schedule="static"):
            raw = raws + threadid() * H
            for i in range(H):
                best = -1
                bestv = 0
                for s in range(S):
                    v = x[b, bins[i, s]]
                    if v != 0 and (best < 0 or v > bestv):
                        best = s
                        bestv = v
                raw[i] = best
            for i in range(H):
                val = raw[i]
                if val < 0:
                    val = 0
                    for t in range(1, max_probes + 1):
                        u = <unsigned long long>((i + 1) * 64 + t)
                        h = probe_a * u + probe_b
                        h = (h ^ (h >> 30)) * <unsigned long long>0xbf58476d1ce4e5b9ULL
                        h = (h ^ (h >> 27)) * <unsigned long long>0x94d049bb133111ebULL
                        h = h ^ (h >> 31)
                        j = <Py_ssize_t>(h % <unsigned long long>H)
                        if raw[j] >= 0:
                            val = raw[j]
                            break
                out[b, i] = val
    free(raws)


def bucket_build(const long long[:, ::1] codes, int[:, ::1] offsets, int[:, ::1] ids,
                 int nthreads):
    """Counting sort of the N items into 2^K buckets, one table per column of codes (N, L).

    Table l: ids[l, offsets[l, c]:offsets[l, c + 1]] are the items with code c, ascending.
    Codes must be in [0, offsets.shape[1] - 1) (checked by the caller).
    """
    cdef Py_ssize_t N = codes.shape[0], L = codes.shape[1], nb = offsets.shape[1] - 1
    cdef Py_ssize_t l, i, c
    cdef int pos
    if L == 0:
        return
    with nogil:
        for l in prange(L, num_threads=nthreads, schedule="dynamic"):
            for c in range(nb + 1):
                offsets[l, c] = 0
            for i in range(N):
                offsets[l, codes[i, l] + 1] = offsets[l, codes[i, l] + 1] + 1
            for c in range(nb):
                offsets[l, c + 1] = offsets[l, c + 1] + offsets[l, c]
            # offsets[l, c] is now the start of bucket c: use it as the write cursor ...
            for i in range(N):
                pos = offsets[l, codes[i, l]]
                ids[l, pos] = <int>i
                offsets[l, codes[i, l]] = pos + 1
            # ... which leaves the end of bucket c (= start of c + 1) there: shift back.
            for c in range(nb - 1, 0, -1):
                offsets[l, c] = offsets[l, c - 1]
            offsets[l, 0] = 0


def bucket_query_count(const long long[:, ::1] qcodes, const int[:, ::1] offsets,
                       const int[:, ::1] ids, Py_ssize_t n_items, long long[::1] counts,
                       int nthreads):
    """counts[b] = size of the union over tables l of bucket qcodes[b, l] of table l."""
    cdef Py_ssize_t B = qcodes.shape[0], L = qcodes.shape[1], b, l, p
    cdef long long c, cnt
    cdef int item
    cdef int* marks
    cdef int* mk
    if B == 0:
        return
    marks = <int*>calloc(nthreads * n_items + 1, sizeof(int))
    if marks == NULL:
        raise MemoryError()
    with nogil, parallel(num_threads=nthreads):
        for b in prange(B, schedule="dynamic", chunksize=4):
            mk = marks + threadid() * n_items
            cnt = 0
            for l in range(L):
                c = qcodes[b, l]
                for p in range(offsets[l, c], offsets[l, c + 1]):
                    item = ids[l, p]
                    if mk[item] != b + 1:   # stamp = sample + 1: no clearing between samples
                        mk[item] = <int>(b + 1)
                        cnt = cnt + 1
            counts[b] = cnt
    free(marks)


def bucket_query_fill(const long long[:, ::1] qcodes, const int[:, ::1] offsets,
                      const int[:, ::1] ids, Py_ssize_t n_items, const long long[::1] qoffsets,
                      int[::1] out, bint sort, int nthreads):
    """out[qoffsets[b]:qoffsets[b + 1]] = the deduplicated union for sample b (ascending if sort)."""
    cdef Py_ssize_t B = qcodes.shape[0], L = qcodes.shape[1], b, l, p
    cdef long long c, cnt
    cdef int item
    cdef int* marks
    cdef int* mk
    cdef int* dst
    if B == 0:
        return
    marks = <int*>calloc(nthreads * n_items + 1, sizeof(int))
    if marks == NULL:
        raise MemoryError()
    with nogil, parallel(num_threads=nthreads):
        for b in prange(B, schedule="dynamic", chunksize=4):
            mk = marks + threadid() * n_items
            dst = &out[0] + qoffsets[b]
            cnt = 0
            for l in range(L):
                c = qcodes[b, l]
                for p in range(offsets[l, c], offsets[l, c + 1]):
                    item = ids[l, p]
                    if mk[item] != b + 1:
                        mk[item] = <int>(b + 1)
                        dst[cnt] = item
                        cnt = cnt + 1
            if sort and cnt > 1:
                qsort(dst, cnt, sizeof(int), hash_cmp_int)
    free(marks)


def bucket_votes(const long long[:, ::1] qcodes, const int[:, ::1] offsets,
                 const int[:, ::1] ids, int[::1] total, int[::1] best, int nthreads):
    """For each item i: total[i] = number of (sample b, table l) whose bucket qcodes[b, l] of table
    l holds i; best[i] = max over samples b of the number of tables where it does."""
    cdef Py_ssize_t B = qcodes.shape[0], L = qcodes.shape[1], N = total.shape[0]
    cdef Py_ssize_t b, l, p, i, t
    cdef long long c
    cdef int item, cnt, acc, top
    cdef int* parts
    cdef int* counts
    cdef int* tot
    cdef int* bst
    if N == 0:
        return
    parts = <int*>calloc(nthreads * 3 * N, sizeof(int))
    if parts == NULL:
        raise MemoryError()
    with nogil:
        with parallel(num_threads=nthreads):
            for b in prange(B, schedule="dynamic", chunksize=4):
                counts = parts + threadid() * 3 * N   # per sample, zeroed again after use
                tot = counts + N
                bst = counts + 2 * N
                for l in range(L):
                    c = qcodes[b, l]
                    for p in range(offsets[l, c], offsets[l, c + 1]):
                        item = ids[l, p]
                        counts[item] = counts[item] + 1
                for l in range(L):
                    c = qcodes[b, l]
                    for p in range(offsets[l, c], offsets[l, c + 1]):
                        item = ids[l, p]
                        cnt = counts[item]
                        if cnt > 0:
                            tot[item] = tot[item] + cnt
                            if cnt > bst[item]:
                                bst[item] = cnt
                            counts[item] = 0
        for i in prange(N, num_threads=nthreads, schedule="static"):
            acc = 0
            top = 0
            for t in range(nthreads):
                acc = acc + parts[t * 3 * N + N + i]
                if parts[t * 3 * N + 2 * N + i] > top:
                    top = parts[t * 3 * N + 2 * N + i]
            total[i] = acc
            best[i] = top
    free(parts)


# ---- sparse layer helpers: move the active columns / rows without numpy's fancy-index overhead ----
def bucket_scatter_columns(const hash_real[:, ::1] src, const long long[::1] cols,
                           hash_real[:, ::1] out, int nthreads):
    """out[b, :] = 0 except out[b, cols[j]] = src[b, j] (cols in [0, out.shape[1]))."""
    cdef Py_ssize_t B = out.shape[0], N = out.shape[1], A = cols.shape[0], b, j
    if B == 0 or N == 0:
        return
    with nogil:
        for b in prange(B, num_threads=nthreads, schedule="static"):
            memset(&out[b, 0], 0, N * sizeof(hash_real))
            for j in range(A):
                out[b, cols[j]] = src[b, j]


def bucket_gather_columns(const hash_real[:, ::1] src, const long long[::1] cols,
                          hash_real[:, ::1] out, int nthreads):
    """out[b, j] = src[b, cols[j]]."""
    cdef Py_ssize_t B = out.shape[0], A = cols.shape[0], b, j
    if B == 0 or A == 0:
        return
    with nogil:
        for b in prange(B, num_threads=nthreads, schedule="static"):
            for j in range(A):
                out[b, j] = src[b, cols[j]]


def bucket_add_rows(hash_real[:, ::1] dst, const long long[::1] rows,
                    const hash_real[:, ::1] src, int nthreads):
    """dst[rows[j], :] += src[j, :] (rows distinct)."""
    cdef Py_ssize_t A = rows.shape[0], n = dst.shape[1], j, k
    cdef hash_real* d
    if A == 0 or n == 0:
        return
    with nogil:
        for j in prange(A, num_threads=nthreads, schedule="static"):
            d = &dst[rows[j], 0]
            for k in range(n):
                d[k] = d[k] + src[j, k]


def bucket_zero_rows(hash_real[:, ::1] dst, const long long[::1] rows, int nthreads):
    """dst[rows[j], :] = 0."""
    cdef Py_ssize_t A = rows.shape[0], n = dst.shape[1], j
    if A == 0 or n == 0:
        return
    with nogil:
        for j in prange(A, num_threads=nthreads, schedule="static"):
            memset(&dst[rows[j], 0], 0, n * sizeof(hash_real))
