package natstest_test

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// rss is the resident memory of process pid in bytes.
func rss(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// BenchmarkInterest measures what subscriptions cost the servers of a
// three-node cluster: N subscriptions on distinct subjects (one per socket
// or user, as the gateway makes them) from one client on node 1, then the
// resident memory each node grew by, per subscription. Node 1 holds the
// subscriptions; nodes 2 and 3 hold the interest their routes carry.
func BenchmarkInterest(b *testing.B) {
	for _, n := range []int{100_000, 300_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			for range b.N {
				c := natstest.RunCluster(b, 3)
				var before [3]int64
				runtime.GC()
				time.Sleep(500 * time.Millisecond)
				for i := range 3 {
					before[i] = rss(b, c.PID(i))
				}
				sub, err := nats.Connect(c.URL(0))
				if err != nil {
					b.Fatal(err)
				}
				defer sub.Close()
				start := time.Now()
				for i := range n {
					if _, err := sub.Subscribe(fmt.Sprintf("sb.out.user.u%07d", i), func(*nats.Msg) {}); err != nil {
						b.Fatal(err)
					}
				}
				if err := sub.Flush(); err != nil {
					b.Fatal(err)
				}
				took := time.Since(start)
				// Let the routes carry the interest.
				time.Sleep(3 * time.Second)
				for i := range 3 {
					grew := rss(b, c.PID(i)) - before[i]
					b.ReportMetric(float64(grew)/float64(n), fmt.Sprintf("B/sub-node%d", i+1))
				}
				b.ReportMetric(float64(took.Microseconds())/float64(n), "µs/subscribe")
			}
		})
	}
}
