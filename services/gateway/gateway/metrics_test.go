package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/presence/presencesvc"
)

// The counters follow what clients do: handshakes by result, events in
// and out, connections; all of them register on one registry.
func TestMetricsFollowClients(t *testing.T) {
	st := newStack(t, func(_ *Config, p *presencesvc.Config) { p.MaxConnectionsPerUser = 1 })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(st.gw.Collectors()...)
	m := st.gw.metrics

	tok := st.token("alice")
	w := st.dial("", nil)
	if r := w.connect(`{"token":"` + tok + `"}`); !strings.HasPrefix(r, "40{") {
		t.Fatalf("alice: %q", r)
	}
	if r := st.dial("", nil).connect(`{"token":"not-a-token"}`); !strings.HasPrefix(r, "44") {
		t.Fatalf("bad token: %q", r)
	}
	if r := st.dial("", nil).connect(`{"token":"` + tok + `"}`); !strings.Contains(r, msgTooMany) {
		t.Fatalf("second socket of alice: %q", r)
	}
	w.send(`42["hello",1]`)
	eventually(t, 2*time.Second, func() bool { return testutil.ToFloat64(m.in) == 1 }, "one event in")
	out, _ := subject.OutUser("alice")
	dm := nats.NewMsg(out)
	dm.Header.Set(api.HeaderEvent, "greeting")
	dm.Data = []byte(`"hi"`)
	if err := st.nc.PublishMsg(dm); err != nil {
		t.Fatal(err)
	}
	w.expect(`42["greeting","hi"]`)

	for result, want := range map[string]float64{"ok": 1, "unauthorized": 1, "too_many": 1, "unavailable": 0} {
		if got := testutil.ToFloat64(m.handshakes.WithLabelValues(result)); got != want {
			t.Errorf("handshakes %s = %v, want %v", result, got, want)
		}
	}
	if got := testutil.ToFloat64(m.out); got < 1 {
		t.Errorf("messages out %v", got)
	}
	if got := testutil.ToFloat64(m.sockets); got != 1 {
		t.Errorf("connections %v, want 1", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	// Two verifications (alice's token came from the cache the second
	// time) and two admits (the bad token's CONNECT was refused by auth)
	// were timed, and one event (without an ack: not a request).
	if got := testutil.ToFloat64(m.authCached); got != 1 {
		t.Errorf("auth cache hits %v, want 1", got)
	}
	observed := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "switchboard_gateway_nats_request_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				observed[l.GetValue()] = mt.GetHistogram().GetSampleCount()
			}
		}
	}
	if observed[reqVerify] != 2 || observed[reqAdmit] != 2 || observed[reqEvent] != 0 {
		t.Errorf("requests timed %v, want verify 2, admit 2, event 0", observed)
	}
}

// The gateway answers discovery like the other services, with its counts.
func TestDiscoverable(t *testing.T) {
	st := newStack(t)
	st.mustConnect("bob", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := st.nc.RequestWithContext(ctx, "$SRV.INFO."+ServiceName, nil)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil || info.Name != ServiceName || info.Metadata["gateway"] != st.gw.ID() {
		t.Fatalf("info %s (%v)", m.Data, err)
	}
	subj, _ := subject.GatewayControl(st.gw.ID(), subject.OpStatus)
	status, err := natsx.Request[api.GatewayStatus](ctx, st.nc, subj, struct{}{})
	if err != nil || status.Connections != 1 || status.Engines != 1 || status.ID != st.gw.ID() {
		t.Fatalf("status %+v, %v", status, err)
	}
	m, err = st.nc.RequestWithContext(ctx, "$SRV.STATS."+ServiceName, nil)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(m.Data, &stats); err != nil || len(stats.Endpoints) != 1 {
		t.Fatalf("stats %s (%v)", m.Data, err)
	}
	var got api.GatewayStatus
	if err := json.Unmarshal(stats.Endpoints[0].Data, &got); err != nil || got.Connections != 1 {
		t.Fatalf("stats data %s", stats.Endpoints[0].Data)
	}
}
