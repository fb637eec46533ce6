package load

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

// Target is the server under load.
type Target struct {
	URL   string                           // Socket.IO server, e.g. http://127.0.0.1:3000
	Token func(uid string) (string, error) // a valid token for uid
	// NATS publishes the notifications and broadcasts (Switchboard's
	// sb.out.* subjects); nil: those scenarios cannot run.
	NATS *nats.Conn
	PID  int // the server's process, for CPU and memory (0: not measured)
	Log  *slog.Logger
}

// Result is one measured figure set: the scenario, its parameters and its
// metrics. It prints as a table row and as one JSON line.
type Result struct {
	Scenario string             `json:"scenario"`
	Params   map[string]any     `json:"params"`
	Metrics  map[string]float64 `json:"metrics"`
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// usage reads the server's usage when a pid was given.
func (t Target) usage() (Usage, bool) {
	if t.PID == 0 {
		return Usage{}, false
	}
	u, err := ReadUsage(t.PID)
	if err != nil {
		t.Log.Warn("server usage", "err", err)
		return Usage{}, false
	}
	return u, true
}

// fleet is a set of connected clients.
type fleet struct {
	clients []*Client
}

func (f *fleet) close() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range f.clients {
		sem <- struct{}{}
		wg.Go(func() { defer func() { <-sem }(); c.Close(false) })
	}
	wg.Wait()
}

// connectMany opens n connections, concurrency at a time; client i is user
// uid(i) with device "d". on receives client i's events.
func (t Target) connectMany(ctx context.Context, n, concurrency int, uid func(int) string, on func(i int) EventFunc) (*fleet, error) {
	f := &fleet{clients: make([]*Client, n)}
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		first atomic.Pointer[error]
	)
	for range min(concurrency, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || first.Load() != nil || ctx.Err() != nil {
					return
				}
				tok, err := t.Token(uid(i))
				if err == nil {
					var ev EventFunc
					if on != nil {
						ev = on(i)
					}
					f.clients[i], err = Dial(ctx, t.URL, DialOptions{Token: tok, DeviceID: "d", OnEvent: ev})
				}
				if err != nil {
					err = fmt.Errorf("connection %d: %w", i, err)
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := first.Load(); e != nil || ctx.Err() != nil {
		f.clients = compact(f.clients)
		f.close()
		if e != nil {
			return nil, *e
		}
		return nil, ctx.Err()
	}
	return f, nil
}

func compact(cs []*Client) []*Client {
	out := cs[:0]
	for _, c := range cs {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// Idle opens conns connections and measures the server's resident memory
// per connection and its CPU while they idle for window.
func Idle(ctx context.Context, t Target, conns int, window time.Duration) (Result, error) {
	before, measured := t.usage()
	start := time.Now()
	f, err := t.connectMany(ctx, conns, 50, func(i int) string { return "idle-" + strconv.Itoa(i) }, nil)
	if err != nil {
		return Result{}, err
	}
	defer f.close()
	took := time.Since(start)
	res := Result{Scenario: "idle", Params: map[string]any{"conns": conns, "window_s": window.Seconds()}, Metrics: map[string]float64{
		"connect_per_s": float64(conns) / took.Seconds(),
	}}
	// Let the connect burst's garbage go before measuring.
	if err := sleep(ctx, 3*time.Second); err != nil {
		return Result{}, err
	}
	a, _ := t.usage()
	if err := sleep(ctx, window); err != nil {
		return Result{}, err
	}
	b, _ := t.usage()
	for _, c := range f.clients {
		select {
		case <-c.Done():
			return Result{}, fmt.Errorf("a connection ended while idle: %v", c.err)
		default:
		}
	}
	if measured {
		res.Metrics["rss_per_conn_kib"] = float64(a.RSS-before.RSS) / float64(conns) / 1024
		res.Metrics["rss_mib"] = float64(b.RSS) / (1 << 20)
		res.Metrics["cpu_pct"] = CPUShare(a, b)
	}
	return res, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// Handshake runs concurrency workers that each connect (WebSocket,
// Engine.IO open, CONNECT with a token, the `40` reply) and close, over
// and over for duration, each time as a new user.
func Handshake(ctx context.Context, t Target, concurrency int, duration time.Duration) (Result, error) {
	var (
		lat    Latencies
		errs   atomic.Int64
		lastEr atomic.Pointer[error]
		seq    atomic.Int64
		wg     sync.WaitGroup
	)
	a, _ := t.usage()
	start := time.Now()
	end := start.Add(duration)
	for range concurrency {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				uid := "hs-" + strconv.FormatInt(seq.Add(1), 36)
				tok, err := t.Token(uid)
				if err != nil {
					errs.Add(1)
					lastEr.Store(&err)
					return
				}
				t0 := time.Now()
				c, err := Dial(ctx, t.URL, DialOptions{Token: tok, DeviceID: "d"})
				if err != nil {
					errs.Add(1)
					lastEr.Store(&err)
					continue
				}
				lat.Add(time.Since(t0))
				c.Close(true)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	b, measured := t.usage()
	s := lat.Summary()
	res := Result{Scenario: "handshake", Params: map[string]any{"concurrency": concurrency, "duration_s": duration.Seconds()}, Metrics: map[string]float64{
		"per_s": float64(s.N) / took.Seconds(), "p50_ms": msOf(s.P50), "p99_ms": msOf(s.P99), "max_ms": msOf(s.Max), "errors": float64(errs.Load()),
	}}
	if measured {
		res.Metrics["cpu_pct"] = CPUShare(a, b)
	}
	if s.N == 0 {
		if e := lastEr.Load(); e != nil {
			return res, fmt.Errorf("no handshake succeeded: %w", *e)
		}
		return res, errors.New("no handshake succeeded")
	}
	return res, nil
}

// stamp is the payload of a timed delivery: when it was published.
type stamp struct {
	T int64 `json:"t"` // Unix ns
}

// deliveryClock records the latency of stamped deliveries.
type deliveryClock struct {
	lat  Latencies
	got  atomic.Int64
	open atomic.Bool // record only while a step runs
}

func (d *deliveryClock) on(event string) func(int) EventFunc {
	return func(int) EventFunc {
		return func(name string, arg []byte, at time.Time) {
			if name != event || !d.open.Load() {
				return
			}
			var s stamp
			if json.Unmarshal(arg, &s) != nil || s.T == 0 {
				return
			}
			d.got.Add(1)
			d.lat.Add(at.Sub(time.Unix(0, s.T)))
		}
	}
}

// pace calls send(i) rate times per second for duration, in 1 ms slots.
func pace(ctx context.Context, rate int, duration time.Duration, send func(i int) error) (int, error) {
	start := time.Now()
	sent := 0
	total := int(float64(rate) * duration.Seconds())
	for sent < total {
		if ctx.Err() != nil {
			return sent, ctx.Err()
		}
		due := int(float64(rate) * time.Since(start).Seconds())
		for sent < min(due, total) {
			if err := send(sent); err != nil {
				return sent, err
			}
			sent++
		}
		time.Sleep(time.Millisecond)
	}
	return sent, nil
}

// StepOptions bound a stepped rate search.
type StepOptions struct {
	Start, Limit int           // first rate and the highest tried (per second)
	Step         time.Duration // how long each rate runs
	P99          time.Duration // the bound
}

// stepped runs the rate search: at each rate, publish for opt.Step, wait
// for the deliveries, and check p99 and losses. expect is the deliveries
// per publish.
func stepped(ctx context.Context, t Target, scenario string, params map[string]any, opt StepOptions, expect int, clock *deliveryClock, publish func(i int, data []byte) error) (Result, []Result, error) {
	var steps []Result
	// Let the connect burst's work (presence updates, garbage) settle.
	failed := sleep(ctx, 2*time.Second)
	best, _ := StepSearch(opt.Start, opt.Limit, 2, func(rate int) bool {
		if failed != nil || ctx.Err() != nil {
			return false
		}
		clock.lat.Reset()
		clock.got.Store(0)
		clock.open.Store(true)
		a, _ := t.usage()
		sent, err := pace(ctx, rate, opt.Step, func(i int) error {
			data, _ := json.Marshal(stamp{T: time.Now().UnixNano()})
			return publish(i, data)
		})
		if err == nil {
			err = t.NATS.Flush()
		}
		if err != nil {
			failed = err
			return false
		}
		// Wait for the stragglers: up to 2 s after the last publish.
		want := int64(sent * expect)
		for wait := time.Now().Add(2 * time.Second); clock.got.Load() < want && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond)
		}
		b, measured := t.usage()
		clock.open.Store(false)
		s := clock.lat.Summary()
		lost := want - int64(s.N)
		ok := lost == 0 && s.P99 <= opt.P99
		r := Result{Scenario: scenario + "-step", Params: map[string]any{"rate": rate}, Metrics: map[string]float64{
			"deliveries_per_s": float64(s.N) / opt.Step.Seconds(), "p50_ms": msOf(s.P50), "p99_ms": msOf(s.P99), "max_ms": msOf(s.Max), "lost": float64(lost),
		}}
		for k, v := range params {
			r.Params[k] = v
		}
		if measured {
			r.Metrics["cpu_pct"] = CPUShare(a, b)
		}
		if ok {
			r.Metrics["ok"] = 1
		}
		steps = append(steps, r)
		t.Log.Info("step", "scenario", scenario, "rate", rate, "p99", s.P99, "lost", lost, "ok", ok)
		return ok
	})
	if failed != nil {
		return Result{}, steps, failed
	}
	res := Result{Scenario: scenario, Params: params, Metrics: map[string]float64{"max_rate": float64(best), "max_deliveries_per_s": float64(best * expect), "p99_bound_ms": msOf(opt.P99)}}
	for _, s := range steps {
		if s.Params["rate"] == best {
			res.Metrics["p99_ms"] = s.Metrics["p99_ms"]
		}
	}
	return res, steps, ctx.Err()
}

// Notify connects users clients (one per user) and finds the highest rate
// of notifications to random users, published on NATS, that arrive with
// p99 within the bound and none lost.
func Notify(ctx context.Context, t Target, users int, opt StepOptions) (Result, []Result, error) {
	if t.NATS == nil {
		return Result{}, nil, errors.New("notify needs a NATS connection")
	}
	clock := &deliveryClock{}
	uid := func(i int) string { return "notify-" + strconv.Itoa(i) }
	f, err := t.connectMany(ctx, users, 50, uid, clock.on("loadNotify"))
	if err != nil {
		return Result{}, nil, err
	}
	defer f.close()
	subjects := make([]string, users)
	for i := range subjects {
		if subjects[i], err = subject.OutUser(uid(i)); err != nil {
			return Result{}, nil, err
		}
	}
	hdr := nats.Header{api.HeaderEvent: []string{"loadNotify"}}
	rng := rand.New(rand.NewPCG(1, 2))
	return stepped(ctx, t, "notify", map[string]any{"users": users, "step_s": opt.Step.Seconds()}, opt, 1, clock, func(_ int, data []byte) error {
		return t.NATS.PublishMsg(&nats.Msg{Subject: subjects[rng.IntN(users)], Header: hdr, Data: data})
	})
}

// Broadcast connects conns clients and finds the highest rate of messages
// to every connection (sb.out.all) whose deliveries arrive with p99 within
// the bound and none lost.
func Broadcast(ctx context.Context, t Target, conns int, opt StepOptions) (Result, []Result, error) {
	if t.NATS == nil {
		return Result{}, nil, errors.New("broadcast needs a NATS connection")
	}
	clock := &deliveryClock{}
	f, err := t.connectMany(ctx, conns, 50, func(i int) string { return "bcast-" + strconv.Itoa(i) }, clock.on("loadBroadcast"))
	if err != nil {
		return Result{}, nil, err
	}
	defer f.close()
	hdr := nats.Header{api.HeaderEvent: []string{"loadBroadcast"}}
	return stepped(ctx, t, "broadcast", map[string]any{"conns": conns, "step_s": opt.Step.Seconds()}, opt, conns, clock, func(_ int, data []byte) error {
		return t.NATS.PublishMsg(&nats.Msg{Subject: subject.OutAll, Header: hdr, Data: data})
	})
}

// timerSeen is what one device saw of its timer.
type timerSeen struct {
	mu     sync.Mutex
	sent   time.Time
	ticks  []int
	at     []time.Time
	dones  int
	after  int // events after timerDone
	values map[int]int
}

// Timers connects devices clients (one per user), has all of them send
// timerStart {"dur": dur} at once, and checks every tick until each
// timer's timerDone: the first tick's delay after timerStart, each tick's
// lateness against its due time (timerStart sent + (dur - r) s: an upper
// bound, it includes the request's own delay), the spacing of consecutive
// ticks, and missing, repeated or wrong values.
func Timers(ctx context.Context, t Target, devices, dur int) (Result, error) {
	seen := make([]*timerSeen, devices)
	for i := range seen {
		seen[i] = &timerSeen{values: map[int]int{}}
	}
	f, err := t.connectMany(ctx, devices, 50, func(i int) string { return "timer-" + strconv.Itoa(i) }, func(i int) EventFunc {
		s := seen[i]
		return func(name string, arg []byte, at time.Time) {
			s.mu.Lock()
			defer s.mu.Unlock()
			switch name {
			case api.EventTick:
				var v struct {
					Timer *int `json:"timer"`
				}
				if json.Unmarshal(arg, &v) != nil || v.Timer == nil {
					return
				}
				if s.dones > 0 {
					s.after++
				}
				s.ticks = append(s.ticks, *v.Timer)
				s.at = append(s.at, at)
				s.values[*v.Timer]++
			case api.EventTimerDone:
				s.dones++
			}
		}
	})
	if err != nil {
		return Result{}, err
	}
	defer f.close()
	a, _ := t.usage()
	arg := []byte(`{"dur":` + strconv.Itoa(dur) + `}`)
	var wg sync.WaitGroup
	var sendErr atomic.Pointer[error]
	for i, c := range f.clients {
		wg.Go(func() {
			s := seen[i]
			s.mu.Lock()
			s.sent = time.Now()
			s.mu.Unlock()
			if err := c.Emit(api.EventTimerStart, arg); err != nil {
				sendErr.Store(&err)
			}
		})
	}
	wg.Wait()
	if e := sendErr.Load(); e != nil {
		return Result{}, fmt.Errorf("timerStart: %w", *e)
	}
	// Wait for every timerDone, up to 5 s after the deadlines.
	deadline := time.Now().Add(time.Duration(dur)*time.Second + 5*time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		done := 0
		for _, s := range seen {
			s.mu.Lock()
			if s.dones > 0 {
				done++
			}
			s.mu.Unlock()
		}
		if done == devices {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, measured := t.usage()
	var first, late, jitter []time.Duration
	var missing, repeated, wrong, noDone, extraDone, afterDone int
	for _, s := range seen {
		s.mu.Lock()
		if len(s.at) > 0 {
			first = append(first, s.at[0].Sub(s.sent))
		}
		for k, r := range s.ticks {
			due := s.sent.Add(time.Duration(dur-r) * time.Second)
			d := s.at[k].Sub(due)
			late = append(late, max(d, 0))
			// A value more than a second early or two late is wrong.
			if d < -time.Second || d > 2*time.Second || r < 0 || r > dur {
				wrong++
			}
			if k > 0 && s.ticks[k-1] == r+1 {
				jitter = append(jitter, (s.at[k].Sub(s.at[k-1]) - time.Second).Abs())
			}
		}
		for r := 0; r <= dur; r++ {
			switch n := s.values[r]; {
			case n == 0:
				missing++
			case n > 1:
				repeated += n - 1
			}
		}
		switch {
		case s.dones == 0:
			noDone++
		case s.dones > 1:
			extraDone += s.dones - 1
		}
		afterDone += s.after
		s.mu.Unlock()
	}
	fs, ls, js := Summarize(first), Summarize(late), Summarize(jitter)
	res := Result{Scenario: "timers", Params: map[string]any{"devices": devices, "dur_s": dur}, Metrics: map[string]float64{
		"first_p50_ms": msOf(fs.P50), "first_p99_ms": msOf(fs.P99), "first_max_ms": msOf(fs.Max),
		"late_p50_ms": msOf(ls.P50), "late_p99_ms": msOf(ls.P99),
		"jitter_p50_ms": msOf(js.P50), "jitter_p99_ms": msOf(js.P99),
		"missing": float64(missing), "repeated": float64(repeated), "wrong": float64(wrong),
		"no_done": float64(noDone), "extra_done": float64(extraDone), "after_done": float64(afterDone),
	}}
	if measured {
		res.Metrics["cpu_pct"] = CPUShare(a, b)
	}
	return res, ctx.Err()
}
