// Package boottest runs a service's run function in tests: in the
// background until the test stops it, and against a NATS cluster that loses
// its JetStream quorum while the service starts.
package boottest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// Running is a service's run function running in the background.
type Running struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan error
}

// Start calls run in the background with a context that Stop, or the end
// of the test, cancels.
func Start(t testing.TB, run func(context.Context) error) *Running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{t: t, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	t.Cleanup(cancel)
	return r
}

// FailIfReturned fails the test if run has returned (while what).
func (r *Running) FailIfReturned(what string) {
	r.t.Helper()
	select {
	case err := <-r.done:
		r.t.Fatalf("run returned %s: %v", what, err)
	default:
	}
}

// Stop cancels run's context and fails the test unless run returns nil
// within 10 s.
func (r *Running) Stop() {
	r.t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		r.t.Fatal("run did not return after its context ended")
	}
}

// WaitsForJetStream starts a service with run (given the NATS URL) while
// JetStream has no quorum (two of three NATS nodes down, as when nodes
// restart during an election), checks that run keeps trying past the 30 s
// a bucket's opening waits by itself, brings the nodes back, and waits until
// serving succeeds. The test binary's TestMain must call
// natstest.ServeIfChild.
func WaitsForJetStream(t *testing.T, run func(ctx context.Context, natsURL string) error, serving func(context.Context, *nats.Conn) error) {
	t.Helper()
	c := natstest.RunCluster(t, 3)
	c.WaitJetStream(30 * time.Second)
	c.Kill(1)
	c.Kill(2)
	r := Start(t, func(ctx context.Context) error { return run(ctx, c.URL(0)) })
	time.Sleep(35 * time.Second)
	r.FailIfReturned("while JetStream had no quorum")
	c.Restart(1)
	c.Restart(2)
	nc := c.Conn(t)
	deadline := time.Now().Add(45 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := serving(ctx, nc)
		cancel()
		if err == nil {
			break
		}
		r.FailIfReturned("after the nodes came back")
		if time.Now().After(deadline) {
			t.Fatalf("not serving after the nodes came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.Stop()
}
