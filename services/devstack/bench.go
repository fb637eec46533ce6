package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/ops"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
	"github.com/switchboard-rt/switchboard/services/devstack/devstack"
	"github.com/switchboard-rt/switchboard/services/devstack/load"
)

// scenarios in the order `all` runs them.
var scenarios = []string{"idle", "handshake", "notify", "broadcast", "timers"}

// benchArgs is a parsed `devstack bench` command line.
type benchArgs struct {
	which                     []string
	url, natsURL, secret      string
	pid                       int
	spawn, short              bool
	conns, users, bcastConns  int
	concurrency, devices, dur int
	window, duration, step    time.Duration
	notifyP99, bcastP99       time.Duration
	notifyStart, notifyLimit  int
	bcastStart, bcastLimit    int
	jsonOnly                  bool
}

func parseBench(args []string, stderr io.Writer) (benchArgs, error) {
	var b benchArgs
	fs := flag.NewFlagSet("devstack bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&b.url, "url", "http://127.0.0.1:3000", "Socket.IO server to load")
	fs.StringVar(&b.natsURL, "nats", "nats://127.0.0.1:4222", "NATS of the server (notify and broadcast publish there)")
	fs.StringVar(&b.secret, "secret", "", "HS256 secret that signs the clients' tokens (default: the development stack's)")
	fs.IntVar(&b.pid, "pid", 0, "the server's process id, to read its CPU and memory from /proc")
	fs.BoolVar(&b.spawn, "spawn", false, "run a development stack of this binary as the server (on free ports), and stop it at the end")
	fs.BoolVar(&b.short, "short", false, "small sizes and short steps: every scenario in about 50 s")
	fs.IntVar(&b.conns, "conns", 10000, "idle: connections")
	fs.DurationVar(&b.window, "window", 50*time.Second, "idle: how long CPU is measured (pings come every ping interval: measure over whole intervals)")
	fs.IntVar(&b.concurrency, "concurrency", 50, "handshake: connections opened at a time")
	fs.DurationVar(&b.duration, "duration", 10*time.Second, "handshake: how long")
	fs.IntVar(&b.users, "users", 2000, "notify: users, one connection each")
	fs.IntVar(&b.notifyStart, "notify-start", 10000, "notify: first rate (per second)")
	fs.IntVar(&b.notifyLimit, "notify-limit", 160000, "notify: highest rate tried")
	fs.DurationVar(&b.notifyP99, "notify-p99", 10*time.Millisecond, "notify: p99 bound")
	fs.IntVar(&b.bcastConns, "bcast-conns", 2000, "broadcast: connections")
	fs.IntVar(&b.bcastStart, "bcast-start", 20, "broadcast: first rate (messages per second, each to every connection)")
	fs.IntVar(&b.bcastLimit, "bcast-limit", 1000, "broadcast: highest rate tried")
	fs.DurationVar(&b.bcastP99, "bcast-p99", 100*time.Millisecond, "broadcast: p99 bound")
	fs.DurationVar(&b.step, "step", 5*time.Second, "notify and broadcast: how long each rate runs")
	fs.IntVar(&b.devices, "devices", 10000, "timers: devices, one timer each, started in one burst")
	fs.IntVar(&b.dur, "dur", 5, "timers: seconds of each timer")
	fs.BoolVar(&b.jsonOnly, "json", false, "print only the JSON lines")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: devstack bench [flags] (%s | all)...\n", strings.Join(scenarios, " | "))
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return b, err
	}
	if b.short {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{
			"conns": "2000", "window": "10s", "duration": "3s", "users": "500", "notify-start": "2000", "notify-limit": "16000",
			"bcast-conns": "500", "bcast-start": "50", "bcast-limit": "400", "step": "1s", "devices": "2000", "dur": "3",
		} {
			if !set[name] {
				_ = fs.Set(name, v)
			}
		}
	}
	if len(pos) == 0 {
		fs.Usage()
		return b, errors.New("name a scenario, or all")
	}
	for _, p := range pos {
		switch {
		case p == "all":
			b.which = append(b.which, scenarios...)
		case slices.Contains(scenarios, p):
			b.which = append(b.which, p)
		default:
			return b, fmt.Errorf("unknown scenario %q", p)
		}
	}
	return b, nil
}

// cmdBench implements `devstack bench`: the load tool.
func cmdBench(args []string, stdout, stderr io.Writer) int {
	b, err := parseBench(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "devstack bench:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	raiseFileLimit(log)
	if b.spawn {
		srv, err := spawnStack(ctx, log)
		if err != nil {
			fmt.Fprintln(stderr, "devstack bench:", err)
			return 1
		}
		defer srv.stop()
		b.url, b.natsURL, b.pid = srv.url, srv.natsURL, srv.pid
	}
	t := load.Target{URL: b.url, PID: b.pid, Log: log, Token: func(uid string) (string, error) {
		if b.secret != "" {
			return authsvc.MintToken(b.secret, "", "", uid, time.Hour)
		}
		return devstack.MintToken(uid, time.Hour, nil)
	}}
	if slices.Contains(b.which, "notify") || slices.Contains(b.which, "broadcast") {
		nc, err := nats.Connect(b.natsURL, nats.Name("switchboard-bench"))
		if err != nil {
			fmt.Fprintln(stderr, "devstack bench: nats:", err)
			return 1
		}
		defer nc.Close()
		t.NATS = nc
	}
	var results []load.Result
	failed := false
	for _, s := range b.which {
		log.Info("scenario", "name", s)
		rs, err := runScenario(ctx, t, b, s)
		results = append(results, rs...)
		if err != nil {
			log.Error("scenario failed", "name", s, "err", err)
			failed = true
		}
		if ctx.Err() != nil {
			break
		}
	}
	if !b.jsonOnly {
		_ = load.WriteTable(stdout, results)
		fmt.Fprintln(stdout)
	}
	if err := load.WriteJSON(stdout, results); err != nil || failed {
		return 1
	}
	return 0
}

func runScenario(ctx context.Context, t load.Target, b benchArgs, name string) ([]load.Result, error) {
	switch name {
	case "idle":
		r, err := load.Idle(ctx, t, b.conns, b.window)
		return one(r, err)
	case "handshake":
		r, err := load.Handshake(ctx, t, b.concurrency, b.duration)
		return one(r, err)
	case "notify":
		r, steps, err := load.Notify(ctx, t, b.users, load.StepOptions{Start: b.notifyStart, Limit: b.notifyLimit, Step: b.step, P99: b.notifyP99})
		return append(steps, r), err
	case "broadcast":
		r, steps, err := load.Broadcast(ctx, t, b.bcastConns, load.StepOptions{Start: b.bcastStart, Limit: b.bcastLimit, Step: b.step, P99: b.bcastP99})
		return append(steps, r), err
	case "timers":
		r, err := load.Timers(ctx, t, b.devices, b.dur)
		return one(r, err)
	}
	return nil, fmt.Errorf("unknown scenario %q", name)
}

func one(r load.Result, err error) ([]load.Result, error) {
	if r.Scenario == "" {
		return nil, err
	}
	return []load.Result{r}, err
}

// raiseFileLimit lifts the soft limit on open files to the hard one: every
// client is a socket.
func raiseFileLimit(log *slog.Logger) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			log.Warn("raise the open files limit", "err", err)
		}
	}
}

// spawned is a development stack run as a child process.
type spawned struct {
	cmd          *exec.Cmd
	pid          int
	url, natsURL string
	dir          string
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// spawnStack runs this binary as a development stack on free ports and
// waits until it is ready.
func spawnStack(ctx context.Context, log *slog.Logger) (*spawned, error) {
	var addrs [3]string
	for i := range addrs {
		a, err := freeAddr()
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		addrs[i] = a
	}
	dir, err := os.MkdirTemp("", "switchboard-bench-")
	if err != nil {
		return nil, fmt.Errorf("store dir: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("own binary: %w", err)
	}
	cmd := exec.Command(self, "-gateway.listen="+addrs[0], "-nats_server.listen="+addrs[1], "-ops.listen="+addrs[2],
		"-nats_server.store_dir="+dir, "-log.level=warn")
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr // the banner is not wanted
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start stack: %w", err)
	}
	s := &spawned{cmd: cmd, pid: cmd.Process.Pid, url: "http://" + addrs[0], natsURL: "nats://" + addrs[1], dir: dir}
	deadline := time.Now().Add(30 * time.Second)
	ready := func() bool {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return ops.Probe(pctx, addrs[2], "/readyz") == nil
	}
	for !ready() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.stop()
			return nil, errors.New("the spawned stack did not become ready in 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	log.Info("spawned a development stack", "pid", s.pid, "url", s.url, "nats", s.natsURL)
	return s, nil
}

func (s *spawned) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	_ = os.RemoveAll(s.dir)
}
