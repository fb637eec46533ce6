package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/timer/timersvc"
)

// nodeKillRecovery is how long after its bucket takes writes again the
// timer service may take to tick every partition again.
const nodeKillRecovery = 6 * time.Second

// Two timer instances on a 3-node NATS cluster with R3 state; the node
// leading the timer bucket is killed with SIGKILL mid-countdown, then comes
// back. Every timer still ends with exactly one 0 and one timerDone, no
// tick is wrong or repeated, and ticks are missed only until the bucket
// takes writes again plus nodeKillRecovery.
func TestNATSNodeKill(t *testing.T) {
	nodes := natstest.RunCluster(t, 3)
	c := newClusterOn(t, nodes.URLs(), func(t testing.TB) *nats.Conn { return nodes.Conn(t) })
	c.env = []string{"SB_TIMER_REPLICAS=3", "SB_LOG_LEVEL=info"}
	for range 2 {
		c.start()
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, k := range c.kids {
				_ = k.cmd.Process.Kill()
				<-k.done // the output is complete
				t.Logf("%s:\n%s", k.name, k.out.String())
			}
		}
	})
	c.waitCovered(30 * time.Second)
	rec := c.record()
	devs := makeDevices(30, 2, 8, 6)
	c.startTimers(devs, time.Second)

	js, err := jetstream.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+timersvc.DefaultConfig().Bucket)
	if err != nil {
		t.Fatal(err)
	}
	leader := nodes.Index(st.CachedInfo().Cluster.Leader)
	kv, err := js.KeyValue(ctx, timersvc.DefaultConfig().Bucket)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	at := time.Now()
	nodes.Kill(leader)
	t.Logf("killed %s (leader of the timer bucket) at %s", nodes.Name(leader), at.Format("15:04:05.000"))
	// The bucket takes writes again once its stream has a new leader.
	for {
		wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
		_, err := kv.Put(wctx, "probe", []byte("x"))
		wcancel()
		if err == nil {
			break
		}
		if time.Since(at) > 30*time.Second {
			t.Fatalf("the bucket takes no write 30 s after the kill: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	writable := time.Since(at)
	t.Logf("the bucket takes writes again %s after the kill", writable.Round(time.Millisecond))
	nodes.Restart(leader)

	waitDeadlines(devs, 4*time.Second)
	// Ticks may be missed, and edges come late, until the bucket takes
	// writes again and the instances drive their partitions again: a watch
	// whose consumer died with the node is noticed within 2 s and made
	// anew, then a lease may take lease_ttl and the failover promise.
	// No value is sent twice.
	missed := rec.check(t, devs, []window{{at.Add(-lateTol), at.Add(writable + nodeKillRecovery)}})
	c.doneEvents(devs)
	t.Logf("%d timers, %d tick-seconds missed", len(devs), missed)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.kids {
		select {
		case <-k.done:
			t.Errorf("%s died:\n%s", k.name, k.out.String())
		default:
		}
	}
}

// On an R3 bucket a timerStop right after its timerStart stops the timer:
// the stop reads the user's timers from the stream's leader, not from a
// replica that may not have applied the start yet (a stop that finds no
// timer writes nothing, and the timer would run on).
func TestStopRightAfterStart(t *testing.T) {
	nodes := natstest.RunCluster(t, 3)
	c := newClusterOn(t, nodes.URLs(), func(t testing.TB) *nats.Conn { return nodes.Conn(t) })
	c.env = []string{"SB_TIMER_REPLICAS=3"}
	c.start()
	c.waitCovered(30 * time.Second)
	request := func(event, uid, dev, body string) string {
		t.Helper()
		subj, _ := subject.In(event)
		m := nats.NewMsg(subj)
		m.Header.Set(api.HeaderUser, uid)
		m.Header.Set(api.HeaderDevice, dev)
		m.Data = []byte(body)
		reply, err := c.nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", event, err)
		}
		return replyData(reply)
	}
	for i := range 300 {
		uid := fmt.Sprintf("u%d", i%20)
		if got := request(api.EventTimerStart, uid, "d", `[{"dur":600}]`); !strings.Contains(got, `"ok"`) {
			t.Fatalf("start %d: %s", i, got)
		}
		if got := request(api.EventTimerStop, uid, "d", `[]`); !strings.Contains(got, `"ok"`) {
			t.Fatalf("stop %d: %s", i, got)
		}
	}
	for u := range 20 {
		uid := fmt.Sprintf("u%d", u)
		if got := request(api.EventTimerList, uid, "d", `[]`); strings.Contains(got, `"dur"`) {
			t.Fatalf("%s still has a timer after its stop: %s", uid, got)
		}
	}
}
