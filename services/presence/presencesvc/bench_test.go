package presencesvc

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// BenchmarkAdmitRelease measures one admit plus one release round trip
// through the micro endpoints against an embedded JetStream server (file
// store), with `connections` events on.
func BenchmarkAdmitRelease(b *testing.B) {
	_, nc := setup(b, DefaultConfig())
	i := 0
	for b.Loop() {
		uid := fmt.Sprintf("u%d", i%100)
		sid := fmt.Sprintf("s%d", i)
		mustAdmit(b, nc, newConn(uid, sid, "gw"))
		if !release(b, nc, uid, sid) {
			b.Fatal("not released")
		}
		i++
	}
}

// BenchmarkAdmitLatency measures one admission's latency (the admit
// request as a gateway sends it: index write, read and compare-and-set of
// the user's key) on one server with an R1 bucket, and on a three-node
// cluster of separate processes with an R3 bucket; then its release.
// Reported: p50 and p99 of admit and of release.
func BenchmarkAdmitLatency(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			cfg := DefaultConfig()
			var nc *nats.Conn
			if nodes == 1 {
				_, nc = setup(b, cfg)
			} else {
				c := natstest.RunCluster(b, nodes)
				cfg.Replicas = nodes
				nc = c.Conn(b)
				startSvc(b, c.Conn(b), cfg)
				waitServing(b, nc)
			}
			var admits, releases []time.Duration
			i := 0
			for b.Loop() {
				uid := fmt.Sprintf("u%d", i%1000)
				sid := fmt.Sprintf("s%d", i)
				t0 := time.Now()
				mustAdmit(b, nc, newConn(uid, sid, "gw"))
				t1 := time.Now()
				if !release(b, nc, uid, sid) {
					b.Fatal("not released")
				}
				admits = append(admits, t1.Sub(t0))
				releases = append(releases, time.Since(t1))
				i++
			}
			for name, d := range map[string][]time.Duration{"admit": admits, "release": releases} {
				slices.Sort(d)
				b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"-p50-ms")
				b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, name+"-p99-ms")
			}
		})
	}
}
