package sched

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// start runs s until the test ends and returns a function that stops it and
// waits for Run to return.
func start[K comparable](t testing.TB, s *Scheduler[K]) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

type firing struct {
	key string
	due time.Time
	at  time.Time
}

func recorder() (func(string, time.Time), chan firing) {
	ch := make(chan firing, 1024)
	return func(k string, due time.Time) { ch <- firing{k, due, time.Now()} }, ch
}

func next(t *testing.T, ch chan firing) firing {
	t.Helper()
	select {
	case f := <-ch:
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("nothing fired")
	}
	return firing{}
}

func quiet(t *testing.T, ch chan firing, d time.Duration) {
	t.Helper()
	select {
	case f := <-ch:
		t.Fatalf("unexpected firing of %q", f.key)
	case <-time.After(d):
	}
}

func TestFiresInDeadlineOrder(t *testing.T) {
	fire, ch := recorder()
	s := New(fire)
	now := time.Now()
	// Set out of order, before and after Run starts.
	s.Set("c", now.Add(90*time.Millisecond))
	s.Set("a", now.Add(30*time.Millisecond))
	start(t, s)
	s.Set("b", now.Add(60*time.Millisecond))
	s.Set("past", now.Add(-time.Second))
	for _, want := range []string{"past", "a", "b", "c"} {
		f := next(t, ch)
		if f.key != want {
			t.Fatalf("fired %q, want %q", f.key, want)
		}
		if f.at.Before(f.due) {
			t.Errorf("%q fired at %v, before its deadline %v", f.key, f.at, f.due)
		}
	}
	if s.Len() != 0 {
		t.Errorf("Len = %d after all fired", s.Len())
	}
}

func TestDueIsReported(t *testing.T) {
	fire, ch := recorder()
	s := New(fire)
	at := time.Now().Add(20 * time.Millisecond)
	s.Set("k", at)
	if d, ok := s.Due("k"); !ok || !d.Equal(at) {
		t.Errorf("Due = %v, %v", d, ok)
	}
	if _, ok := s.Due("other"); ok {
		t.Error("Due of an unknown key")
	}
	start(t, s)
	if f := next(t, ch); f.key != "k" || !f.due.Equal(at) {
		t.Errorf("fired %q due %v, want k due %v", f.key, f.due, at)
	}
	if _, ok := s.Due("k"); ok {
		t.Error("Due after firing")
	}
}

func TestSetMovesKey(t *testing.T) {
	fire, ch := recorder()
	s := New(fire)
	start(t, s)
	now := time.Now()
	s.Set("late", now.Add(time.Hour))
	s.Set("mid", now.Add(80*time.Millisecond))
	// Move "late" earlier than "mid": must wake the scheduler.
	s.Set("late", now.Add(20*time.Millisecond))
	// Move "mid" later.
	s.Set("mid", now.Add(150*time.Millisecond))
	if s.Len() != 2 {
		t.Fatalf("Len = %d, want 2 (Set replaces)", s.Len())
	}
	f := next(t, ch)
	if f.key != "late" || time.Since(now) > 2*time.Second {
		t.Fatalf("fired %q, want late", f.key)
	}
	f = next(t, ch)
	if f.key != "mid" || f.at.Before(now.Add(150*time.Millisecond)) {
		t.Fatalf("fired %q at +%v, want mid at >= +150ms", f.key, f.at.Sub(now))
	}
	quiet(t, ch, 50*time.Millisecond)
}

func TestCancel(t *testing.T) {
	fire, ch := recorder()
	s := New(fire)
	start(t, s)
	now := time.Now()
	s.Set("a", now.Add(30*time.Millisecond))
	s.Set("b", now.Add(40*time.Millisecond))
	s.Set("c", now.Add(50*time.Millisecond))
	if !s.Cancel("a") || !s.Cancel("c") {
		t.Fatal("Cancel of a pending key = false")
	}
	if s.Cancel("a") || s.Cancel("nope") {
		t.Error("Cancel of an absent key = true")
	}
	if f := next(t, ch); f.key != "b" {
		t.Fatalf("fired %q, want b", f.key)
	}
	quiet(t, ch, 100*time.Millisecond)
}

func TestFireMayReschedule(t *testing.T) {
	const period = 10 * time.Millisecond
	var (
		s     *Scheduler[string]
		count atomic.Int32
		dues  = make(chan time.Time, 16)
	)
	s = New(func(k string, due time.Time) {
		dues <- due
		if count.Add(1) < 5 {
			s.Set(k, due.Add(period)) // periodic, deadline based
		}
		// Cancel from inside fire must not deadlock.
		s.Cancel("never")
	})
	start(t, s)
	first := time.Now().Add(period)
	s.Set("tick", first)
	for i := range 5 {
		select {
		case d := <-dues:
			if want := first.Add(time.Duration(i) * period); !d.Equal(want) {
				t.Errorf("firing %d due %v, want %v (drift)", i, d, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d firings", i)
		}
	}
	select {
	case <-dues:
		t.Fatal("fired after the last reschedule")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestFireDueImmediatelyFromFire(t *testing.T) {
	// fire sets a key that is already due: it must fire without waiting for
	// the next timer.
	var s *Scheduler[int]
	got := make(chan int, 4)
	s = New(func(k int, _ time.Time) {
		got <- k
		if k == 1 {
			s.Set(2, time.Now().Add(-time.Millisecond))
		}
	})
	start(t, s)
	s.Set(1, time.Now())
	for _, want := range []int{1, 2} {
		select {
		case k := <-got:
			if k != want {
				t.Fatalf("fired %d, want %d", k, want)
			}
		case <-time.After(time.Second):
			t.Fatalf("key %d did not fire", want)
		}
	}
}

func TestManyKeysOneGoroutine(t *testing.T) {
	const n = 10000
	var fired atomic.Int32
	seen := make([]atomic.Bool, n)
	done := make(chan struct{})
	s := New(func(k int, _ time.Time) {
		if seen[k].Swap(true) {
			t.Errorf("key %d fired twice", k)
		}
		if fired.Add(1) == n {
			close(done)
		}
	})
	before := runtime.NumGoroutine()
	start(t, s)
	base := time.Now().Add(50 * time.Millisecond)
	for i := range n {
		s.Set(i, base.Add(time.Duration(i%100)*time.Millisecond))
	}
	// Cancel and re-set some keys while running.
	for i := 0; i < n; i += 10 {
		s.Cancel(i)
		s.Set(i, base.Add(time.Duration(i%37)*time.Millisecond))
	}
	if g := runtime.NumGoroutine(); g > before+1 {
		t.Errorf("goroutines grew from %d to %d with %d keys", before, g, n)
	}
	if s.Len() > n {
		t.Errorf("Len = %d > %d", s.Len(), n)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("only %d of %d keys fired", fired.Load(), n)
	}
	if s.Len() != 0 {
		t.Errorf("Len = %d after all fired", s.Len())
	}
}

func TestConcurrentSetCancel(t *testing.T) {
	var fired atomic.Int32
	s := New(func(int, time.Time) { fired.Add(1) })
	start(t, s)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				k := g*1000 + i
				s.Set(k, time.Now().Add(time.Duration(i%5)*time.Millisecond))
				if i%2 == 0 {
					s.Cancel(k)
				}
				s.Due(k)
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for s.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s.Len() != 0 {
		t.Fatalf("Len = %d", s.Len())
	}
	// Every key not cancelled fired; a cancelled key may have fired before
	// its Cancel, so count at least the uncancelled half.
	if n := fired.Load(); n < 4*250 || n > 4*500 {
		t.Errorf("fired %d, want 1000..2000", n)
	}
}

func TestContextCancelStopsRun(t *testing.T) {
	fire, ch := recorder()
	s := New(fire)
	stop := start(t, s)
	s.Set("soon", time.Now().Add(50*time.Millisecond))
	stop() // returns only once Run has returned
	quiet(t, ch, 100*time.Millisecond)
	if s.Len() != 1 {
		t.Errorf("Len = %d, want the pending key kept", s.Len())
	}

	// Run with an already cancelled context returns at once.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { New(func(int, time.Time) {}).Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Run with a cancelled context did not return")
	}
}

func BenchmarkSetFire(b *testing.B) {
	var fired atomic.Int64
	done := make(chan struct{})
	target := int64(b.N)
	s := New(func(int, time.Time) {
		if fired.Add(1) == target {
			close(done)
		}
	})
	start(b, s)
	b.ReportAllocs()
	b.ResetTimer()
	now := time.Now()
	for i := range b.N {
		s.Set(i, now)
	}
	<-done
}

func BenchmarkSetMove(b *testing.B) {
	s := New(func(int, time.Time) {})
	far := time.Now().Add(time.Hour)
	for i := range 10000 {
		s.Set(i, far.Add(time.Duration(i)*time.Millisecond))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.Set(i%10000, far.Add(time.Duration(i%7919)*time.Millisecond))
	}
}

// The heap stays ordered through random sets, moves and cancels: every
// remaining key fires once, in deadline order.
func TestRandomOpsFireInOrder(t *testing.T) {
	type fired struct {
		key int
		due time.Time
	}
	got := make(chan fired, 4096)
	s := New(func(k int, due time.Time) { got <- fired{k, due} })
	base := time.Now().Add(200 * time.Millisecond)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[int]time.Time{}
	for range 20000 {
		k := rng.IntN(2000)
		if rng.IntN(4) == 0 {
			if _, ok := want[k]; s.Cancel(k) != ok {
				t.Fatalf("Cancel(%d) disagrees with the model", k)
			}
			delete(want, k)
			continue
		}
		at := base.Add(time.Duration(rng.IntN(300)) * time.Millisecond)
		s.Set(k, at)
		want[k] = at
	}
	if s.Len() != len(want) {
		t.Fatalf("Len = %d, want %d", s.Len(), len(want))
	}
	start(t, s)
	var last time.Time
	for range len(want) {
		select {
		case f := <-got:
			if at, ok := want[f.key]; !ok || !at.Equal(f.due) {
				t.Fatalf("key %d fired with due %v, want %v (present %v)", f.key, f.due, at, ok)
			}
			if f.due.Before(last) {
				t.Fatalf("key %d due %v fired after one due %v", f.key, f.due, last)
			}
			last = f.due
			delete(want, f.key)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d keys did not fire", len(want))
		}
	}
}

// A batched scheduler fires on multiples of its grain: never before a
// deadline, at most a grain after it, and deadlines within one grain
// together; a deadline already due fires at once.
func TestBatchedFiresOnGrain(t *testing.T) {
	const grain = 20 * time.Millisecond
	type fired struct {
		key int
		due time.Time
		at  time.Time
	}
	got := make(chan fired, 64)
	s := NewBatched(grain, func(k int, due time.Time) { got <- fired{k, due, time.Now()} })
	start(t, s)
	// Ten deadlines spread over one grain, starting on a grain boundary.
	base := time.Now().Add(100 * time.Millisecond).Truncate(grain).Add(grain)
	for i := range 10 {
		s.Set(i, base.Add(time.Duration(i)*grain/10+time.Millisecond))
	}
	var ats []time.Time
	for range 10 {
		select {
		case f := <-got:
			if f.at.Before(f.due) {
				t.Errorf("key %d fired %s before its deadline", f.key, f.due.Sub(f.at))
			}
			if late := f.at.Sub(f.due); late > grain+15*time.Millisecond {
				t.Errorf("key %d fired %s late, grain %s", f.key, late, grain)
			}
			ats = append(ats, f.at)
		case <-time.After(5 * time.Second):
			t.Fatal("not every key fired")
		}
	}
	if spread := ats[len(ats)-1].Sub(ats[0]); spread > 5*time.Millisecond {
		t.Errorf("one grain's deadlines fired over %s, want together", spread)
	}
	now := time.Now()
	s.Set(99, now)
	select {
	case f := <-got:
		if d := f.at.Sub(now); d > 10*time.Millisecond {
			t.Errorf("a due key fired after %s, want at once", d)
		}
	case <-time.After(time.Second):
		t.Fatal("a due key did not fire")
	}
}

// While its fire runs a key has no deadline: Due and Cancel say so, a key
// not set again leaves the index, and one set again fires again.
func TestFiringKeyHasNoDeadline(t *testing.T) {
	var s *Scheduler[string]
	type seen struct {
		due       bool
		cancelled bool
	}
	got := make(chan seen, 4)
	s = New(func(k string, _ time.Time) {
		_, due := s.Due(k)
		got <- seen{due, k == "c" && s.Cancel(k)}
		if k == "a" {
			s.Set(k, time.Now().Add(time.Hour))
		}
	})
	start(t, s)
	now := time.Now()
	s.Set("a", now)
	s.Set("b", now)
	s.Set("c", now)
	for range 3 {
		select {
		case x := <-got:
			if x.due || x.cancelled {
				t.Fatalf("firing key: due %v, cancelled %v", x.due, x.cancelled)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("nothing fired")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.idx)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys indexed, want a only", n)
		}
		time.Sleep(time.Millisecond)
	}
	if _, ok := s.Due("a"); !ok || s.Len() != 1 {
		t.Fatalf("a set again from its fire: due %v, len %d", ok, s.Len())
	}
	if _, ok := s.Due("b"); ok {
		t.Fatal("b still has a deadline")
	}
}

// A periodic key set again from its own fire reuses its entry.
func BenchmarkRefire(b *testing.B) {
	var (
		s     *Scheduler[int]
		fired atomic.Int64
		done  = make(chan struct{})
	)
	const keys = 1000
	target := int64(b.N)
	s = New(func(k int, due time.Time) {
		n := fired.Add(1)
		if n == target {
			close(done)
		}
		if n <= target-keys {
			s.Set(k, due)
		}
	})
	start(b, s)
	b.ReportAllocs()
	b.ResetTimer()
	now := time.Now()
	for i := range min(keys, b.N) {
		s.Set(i, now)
	}
	<-done
}
