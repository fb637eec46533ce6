package presencesvc

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func TestMain(m *testing.M) {
	natstest.ServeIfChild()
	os.Exit(m.Run())
}

// On a 3-node cluster with an R3 bucket, killing the node that leads the
// bucket's stream neither loses a slot nor lets a user over the limit:
// admits go on once a new leader is elected (a write whose reply was lost
// is found by the next compare-and-set), and the node comes back.
func TestClusterLeaderKillKeepsTheLimit(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	cfg := testConfig()
	cfg.Replicas = 3
	nc := c.Conn(t)
	startSvc(t, c.Conn(t), cfg)
	startSvc(t, c.Conn(t), cfg) // two presence instances
	waitServing(t, nc)
	mustAdmit(t, nc, newConn("alice", "a1", "gw"))
	mustAdmit(t, nc, newConn("alice", "a2", "gw"))

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	leader := c.Index(st.CachedInfo().Cluster.Leader)
	c.Kill(leader)
	killed := time.Now()
	// Admits of several sockets race the election; exactly one more fits.
	admitted := 0
	for _, sid := range []string{"a3", "a4", "a5"} {
		deadline := time.Now().Add(20 * time.Second)
		for {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := natsx.Request[api.AdmitReply](rctx, nc, subject.PresenceAdmit, api.AdmitRequest{Conn: newConn("alice", sid, "gw")})
			rcancel()
			if err == nil {
				admitted++
				break
			}
			if natsx.CodeOf(err) == api.CodeTooMany {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("admit %s after the leader's kill: %v", sid, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("admits answered again %s after the kill", time.Since(killed).Round(time.Millisecond))
	if admitted != 1 {
		t.Fatalf("%d more sockets admitted, want 1", admitted)
	}
	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a1", "a2", "a3"}) {
		t.Fatalf("alice holds %v", got)
	}
	c.Restart(leader)
	c.WaitJetStream(20 * time.Second)
	if got := socketIDs(list(t, nc, "alice")); !slices.Equal(got, []string{"a1", "a2", "a3"}) {
		t.Fatalf("after the restart alice holds %v", got)
	}
}

// On an R3 bucket a release right after its admit finds the socket: the
// read goes to the stream's leader, not to a replica that may not have
// applied the admit yet (a release that finds nothing writes nothing, and
// the slot would stay taken).
func TestClusterReleaseRightAfterAdmit(t *testing.T) {
	c := natstest.RunCluster(t, 3)
	cfg := testConfig()
	cfg.Replicas = 3
	nc := c.Conn(t)
	startSvc(t, c.Conn(t), cfg)
	waitServing(t, nc)
	for i := range 500 {
		uid, sid := fmt.Sprintf("u%d", i%25), fmt.Sprintf("s%d", i)
		mustAdmit(t, nc, newConn(uid, sid, "gw"))
		if !release(t, nc, uid, sid) {
			t.Fatalf("release %d right after its admit found no socket", i)
		}
	}
}
