package presencesvc

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

func TestLimitOf(t *testing.T) {
	cfg := testConfig() // limit 3
	cfg.LimitClaim = "max_conns"
	cfg.LimitClaimMax = 10
	for _, tc := range []struct {
		claims string
		want   int
	}{
		{``, 3},
		{`{"role":"x"}`, 3},
		{`{"max_conns":5}`, 5},
		{`{"max_conns":1}`, 1},
		{`{"max_conns":10}`, 10},
		{`{"max_conns":11}`, 10},
		{`{"max_conns":1e9}`, 10},
		{`{"max_conns":0}`, 3},
		{`{"max_conns":-2}`, 3},
		{`{"max_conns":2.5}`, 3},
		{`{"max_conns":"5"}`, 3},
		{`{"max_conns":null}`, 3},
		{`[1]`, 3},
		{`not json`, 3},
	} {
		if got := cfg.limitOf(json.RawMessage(tc.claims)); got != tc.want {
			t.Errorf("limitOf(%s) = %d, want %d", tc.claims, got, tc.want)
		}
	}
	cfg.LimitClaim = ""
	if got := cfg.limitOf(json.RawMessage(`{"max_conns":5}`)); got != 3 {
		t.Errorf("without limit_claim: %d, want 3", got)
	}
}

// A user whose token's claim allows 5 connections gets exactly 5 under
// concurrent admits through two instances; the claims are not stored.
func TestLimitClaimAcrossInstances(t *testing.T) {
	cfg := testConfig()
	cfg.LimitClaim = "max_conns"
	srv, nc1 := setup(t, cfg)
	nc2 := srv.Conn(t)
	startSvc(t, nc2, cfg)

	admitted, _, other := concurrentAdmits(t, []*nats.Conn{nc1, nc2}, 20, func(i int) api.Conn {
		c := newConn("paid", fmt.Sprintf("s%02d", i), fmt.Sprintf("gw%d", i%3))
		c.Claims = json.RawMessage(`{"max_conns":5}`)
		return c
	})
	if len(other) > 0 || len(admitted) != 5 {
		t.Fatalf("admitted %v, errors %v; want 5 admitted", admitted, other)
	}
	stored := list(t, nc1, "paid")
	got := socketIDs(stored)
	slices.Sort(got)
	slices.Sort(admitted)
	if !slices.Equal(got, admitted) {
		t.Fatalf("stored %v, admitted %v", got, admitted)
	}
	for _, c := range stored {
		if c.Claims != nil {
			t.Fatalf("claims stored: %s", c.Claims)
		}
	}
	// Another user's token without the claim keeps the default limit.
	for i := 1; i <= 3; i++ {
		mustAdmit(t, nc1, newConn("free", fmt.Sprintf("f%d", i), "gw"))
	}
	_, err := admit(t, nc1, newConn("free", "f4", "gw"))
	wantErr(t, err, api.CodeTooMany, "Too many connections")
}
