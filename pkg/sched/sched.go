// Package sched is a deadline scheduler: any number of keyed deadlines served
// by one goroutine and one time.Timer, with O(log n) set, move and cancel.
// Gateways use it for heartbeats and handshake timeouts, the timer service
// for ticks.
package sched

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

type entry[K comparable] struct {
	key K
	at  time.Time
	i   int
}

type entries[K comparable] []*entry[K]

func (h entries[K]) Len() int           { return len(h) }
func (h entries[K]) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h entries[K]) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].i = i; h[j].i = j }
func (h *entries[K]) Push(x any)        { e := x.(*entry[K]); e.i = len(*h); *h = append(*h, e) }
func (h *entries[K]) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.i = -1
	return e
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
}

// New returns a scheduler; call Run to serve it.
func New[K comparable](fire func(key K, due time.Time)) *Scheduler[K] {
	return &Scheduler[K]{idx: map[K]*entry[K]{}, wake: make(chan struct{}, 1), fire: fire}
}

// Set schedules key at at, replacing any deadline the key had.
func (s *Scheduler[K]) Set(key K, at time.Time) {
	s.mu.Lock()
	e, ok := s.idx[key]
	if ok {
		e.at = at
		heap.Fix(&s.h, e.i)
	} else {
		e = &entry[K]{key: key, at: at}
		heap.Push(&s.h, e)
		s.idx[key] = e
	}
	first := s.h[0] == e
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
	heap.Remove(&s.h, e.i)
	delete(s.idx, key)
	return true
}

// Due returns key's deadline, if any.
func (s *Scheduler[K]) Due(key K) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.idx[key]
	if !ok {
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
	key K
	at  time.Time
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
		for len(s.h) > 0 && !s.h[0].at.After(now) {
			e := heap.Pop(&s.h).(*entry[K])
			delete(s.idx, e.key)
			due = append(due, fired[K]{e.key, e.at})
		}
		wait := time.Hour
		if len(s.h) > 0 {
			wait = s.h[0].at.Sub(now)
		}
		s.mu.Unlock()
		for _, f := range due {
			s.fire(f.key, f.at)
		}
		if len(due) > 0 {
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
