// Package sched is a deadline scheduler: any number of keyed deadlines served
// by one goroutine and one time.Timer, with O(log n) set, move and cancel.
// Gateways use it for heartbeats and handshake timeouts, the timer service
// for ticks.
package sched

import (
	"context"
	"sync"
	"time"
)

type entry[K comparable] struct {
	key K
	at  time.Time
	i   int // index in the heap
}

// slot is a heap element: the deadline (Unix ns) is kept inline so that
// ordering compares integers without following pointers.
type slot[K comparable] struct {
	ns int64
	e  *entry[K]
}

// entries is a binary min-heap of deadlines.
type entries[K comparable] []slot[K]

func (h entries[K]) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].e.i = i
	h[j].e.i = j
}

func (h entries[K]) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if h[i].ns <= h[j].ns {
			break
		}
		h.swap(i, j)
		j = i
	}
}

// down sifts i down and reports whether it moved.
func (h entries[K]) down(i0 int) bool {
	i, n := i0, len(h)
	for {
		j := 2*i + 1
		if j >= n {
			break
		}
		if r := j + 1; r < n && h[r].ns < h[j].ns {
			j = r
		}
		if h[i].ns <= h[j].ns {
			break
		}
		h.swap(i, j)
		i = j
	}
	return i > i0
}

func (h *entries[K]) push(e *entry[K]) {
	e.i = len(*h)
	*h = append(*h, slot[K]{e.at.UnixNano(), e})
	h.up(e.i)
}

// remove takes out the element at i.
func (h *entries[K]) remove(i int) *entry[K] {
	old := *h
	n := len(old) - 1
	e := old[i].e
	if i != n {
		old.swap(i, n)
	}
	old[n] = slot[K]{}
	*h = old[:n]
	if i != n && !(*h).down(i) {
		(*h).up(i)
	}
	e.i = -1
	return e
}

// fix restores the order after the deadline of the element at i changed.
func (h entries[K]) fix(i int) {
	h[i].ns = h[i].e.at.UnixNano()
	if !h.down(i) {
		h.up(i)
	}
}

// Scheduler calls fire(key, due) once for each deadline that comes due.
// fire runs on the scheduler goroutine and must not block; it may call Set
// and Cancel.
type Scheduler[K comparable] struct {
	mu   sync.Mutex
	h    entries[K]
	idx  map[K]*entry[K]
	wake chan struct{}
	fire func(K, time.Time)
	// grain > 0 serves deadlines in batches: the scheduler wakes only on
	// multiples of grain, firing everything due by then.
	grain time.Duration
}

// New returns a scheduler; call Run to serve it.
func New[K comparable](fire func(key K, due time.Time)) *Scheduler[K] {
	return &Scheduler[K]{idx: map[K]*entry[K]{}, wake: make(chan struct{}, 1), fire: fire}
}

// NewBatched returns a scheduler that wakes only on multiples of grain (of
// Unix time) and then fires every deadline due by then: a deadline fires
// at most grain late, and deadlines close together share one wake-up.
// Callers that send something per deadline thereby write in batches.
func NewBatched[K comparable](grain time.Duration, fire func(key K, due time.Time)) *Scheduler[K] {
	s := New(fire)
	s.grain = grain
	return s
}

// wakeAt is when to serve a deadline at at.
func (s *Scheduler[K]) wakeAt(at time.Time) time.Time {
	if s.grain <= 0 {
		return at
	}
	if r := time.Duration(at.UnixNano() % int64(s.grain)); r != 0 {
		return at.Add(s.grain - r)
	}
	return at
}

// Set schedules key at at, replacing any deadline the key had.
func (s *Scheduler[K]) Set(key K, at time.Time) {
	s.mu.Lock()
	e, ok := s.idx[key]
	switch {
	case ok && e.i >= 0:
		e.at = at
		s.h.fix(e.i)
	case ok: // firing now: set again from its own fire, typically
		e.at = at
		s.h.push(e)
	default:
		e = &entry[K]{key: key, at: at}
		s.h.push(e)
		s.idx[key] = e
	}
	first := s.h[0].e == e
	s.mu.Unlock()
	if first {
		s.poke()
	}
}

// Cancel removes key's deadline; it reports whether there was one.
func (s *Scheduler[K]) Cancel(key K) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.idx[key]
	if !ok {
		return false
	}
	delete(s.idx, key)
	if e.i < 0 {
		return false // firing now, no deadline left
	}
	s.h.remove(e.i)
	return true
}

// Due returns key's deadline, if any.
func (s *Scheduler[K]) Due(key K) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.idx[key]
	if !ok || e.i < 0 {
		return time.Time{}, false
	}
	return e.at, true
}

// Len is the number of pending deadlines.
func (s *Scheduler[K]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.h)
}

func (s *Scheduler[K]) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

type fired[K comparable] struct {
	e  *entry[K]
	at time.Time
}

// Run serves deadlines until ctx ends.
func (s *Scheduler[K]) Run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var due []fired[K]
	for {
		now := time.Now()
		due = due[:0]
		s.mu.Lock()
		// A fired entry stays in the index, out of the heap (i < 0), so
		// that setting it again from fire, as ticks do, reuses it.
		for len(s.h) > 0 && !s.h[0].e.at.After(now) {
			e := s.h.remove(0)
			due = append(due, fired[K]{e, e.at})
		}
		wait := time.Hour
		if len(s.h) > 0 {
			wait = s.wakeAt(s.h[0].e.at).Sub(now)
		}
		s.mu.Unlock()
		for _, f := range due {
			s.fire(f.e.key, f.at)
		}
		if len(due) > 0 {
			s.mu.Lock()
			for _, f := range due {
				if f.e.i < 0 && s.idx[f.e.key] == f.e {
					delete(s.idx, f.e.key) // not set again
				}
			}
			s.mu.Unlock()
			continue // fire may have scheduled something already due
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		}
	}
}
