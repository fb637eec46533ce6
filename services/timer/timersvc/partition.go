package timersvc

import (
	"hash/fnv"
	"slices"
	"strconv"
)

// PartitionOf is the partition of a user's timers: FNV-1a (32 bit) of the
// user id modulo the number of partitions. It runs for every tick, so it
// hashes in place rather than through hash/fnv (no allocation).
func PartitionOf(uid string, partitions int) int {
	const offset, prime = 2166136261, 16777619
	h := uint32(offset)
	for i := 0; i < len(uid); i++ {
		h ^= uint32(uid[i])
		h *= prime
	}
	return int(h % uint32(partitions))
}

// score ranks member m for partition p (rendezvous hashing).
func score(m string, p int) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(m))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write(strconv.AppendInt(nil, int64(p), 10))
	return h.Sum64()
}

// assign gives each of n partitions to one of members (lease identities):
// rendezvous hashing with bounded load, so every member gets n/len(members)
// partitions (rounded up or down) and a member joining or leaving moves few
// partitions besides its own share. Every instance computes the same result
// from the same members. It returns the owner of each partition ("" when
// there are no members).
func assign(n int, members []string) []string {
	owners := make([]string, n)
	if len(members) == 0 {
		return owners
	}
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	// The first n%len members in rendezvous order for "capacity" get one
	// more: a stable, shared choice.
	base, extra := n/len(ms), n%len(ms)
	quota := make(map[string]int, len(ms))
	byCap := slices.Clone(ms)
	slices.SortFunc(byCap, func(a, b string) int { return cmpScore(score(b, -1), score(a, -1), a, b) })
	for i, m := range byCap {
		quota[m] = base
		if i < extra {
			quota[m]++
		}
	}
	rank := make([]string, len(ms))
	for p := range n {
		copy(rank, ms)
		slices.SortFunc(rank, func(a, b string) int { return cmpScore(score(b, p), score(a, p), a, b) })
		for _, m := range rank {
			if quota[m] > 0 {
				quota[m]--
				owners[p] = m
				break
			}
		}
	}
	return owners
}

func cmpScore(x, y uint64, a, b string) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	if a < b {
		return -1
	}
	if a > b {
		return 1
	}
	return 0
}
