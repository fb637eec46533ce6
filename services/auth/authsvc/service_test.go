package authsvc

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func TestServiceVerify(t *testing.T) {
	nc := startService(t, discardLog(), Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: testSecret, Issuer: "issuer-1", Audience: "aud-1"}})

	good := claimsFor("alice")
	good.Name = "Alice"
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), good)
	got, err := verify(t, nc, tok)
	if err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if got.UserID != "alice" || got.Name != "Alice" || !got.Expires.Equal(good.ExpiresAt.Time.Truncate(time.Second)) {
		t.Fatalf("reply = %+v", got)
	}

	expired := claimsFor("alice")
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	bad := map[string]string{
		"wrong secret": sign(t, jwt.SigningMethodHS256, []byte("another secret, long enough to pass"), good),
		"expired":      sign(t, jwt.SigningMethodHS256, []byte(testSecret), expired),
		"garbage":      "garbage",
		"empty":        "",
		"too long":     strings.Repeat("x", MaxTokenLen+1),
	}
	for name, tok := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := verify(t, nc, tok)
			wantCode(t, err, api.CodeUnauthorized)
		})
	}
}

func TestServiceRequestBody(t *testing.T) {
	nc := startService(t, discardLog(), jwtConfig())
	cases := []struct {
		body string
		code int
	}{
		{"", api.CodeBadRequest},
		{"not json", api.CodeBadRequest},
		{`{"token":`, api.CodeBadRequest},
		{"null", api.CodeBadRequest},
		{`"a token"`, api.CodeBadRequest},
		{`["a token"]`, api.CodeBadRequest},
		{"42", api.CodeBadRequest},
		{`{"token":42}`, api.CodeBadRequest},
		{`{"token":{"a":1}}`, api.CodeBadRequest},
		{`{}`, api.CodeUnauthorized},
		{`{"token":null}`, api.CodeUnauthorized},
		{`{"token":"x","extra":true}`, api.CodeUnauthorized},
		{" \n" + `{"token":"x"}`, api.CodeUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.body, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			reply, err := natsx.RequestMsg(ctx, nc, &nats.Msg{Subject: subject.AuthVerify, Data: []byte(tc.body)})
			if err != nil {
				t.Fatal(err)
			}
			e := natsx.ErrorFromMsg(reply)
			if e == nil {
				t.Fatalf("no error reply, body %q", reply.Data)
			}
			wantCode(t, e, tc.code)
		})
	}
}

func TestServiceDiscovery(t *testing.T) {
	nc := startService(t, discardLog(), jwtConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	pingSubj, err := micro.ControlSubject(micro.PingVerb, ServiceName, "")
	if err != nil {
		t.Fatal(err)
	}
	if pingSubj != "$SRV.PING.switchboard-auth" {
		t.Fatalf("ping subject = %s", pingSubj)
	}
	msg, err := nc.RequestWithContext(ctx, pingSubj, nil)
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	var ping micro.Ping
	if err := json.Unmarshal(msg.Data, &ping); err != nil {
		t.Fatal(err)
	}
	if ping.Name != ServiceName || ping.ID == "" {
		t.Fatalf("ping = %+v", ping)
	}

	infoSubj, _ := micro.ControlSubject(micro.InfoVerb, ServiceName, "")
	msg, err = nc.RequestWithContext(ctx, infoSubj, nil)
	if err != nil {
		t.Fatalf("info: %v", err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Endpoints) != 1 || info.Endpoints[0].Subject != subject.AuthVerify || info.Endpoints[0].QueueGroup != micro.DefaultQueueGroup {
		t.Fatalf("endpoints = %+v, want one on %s in queue group %s", info.Endpoints, subject.AuthVerify, micro.DefaultQueueGroup)
	}
}

// Two instances share requests through the queue group: every request gets
// exactly one reply, and stopping one instance leaves the other serving.
func TestServiceInstancesShareLoad(t *testing.T) {
	s := natstest.Run(t)
	a, err := Start(context.Background(), discardLog(), s.Conn(t), jwtConfig())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Start(context.Background(), discardLog(), s.Conn(t), jwtConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Stop() })
	nc := s.Conn(t)
	tok, err := MintToken(testSecret, "", "", "erin", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := verify(t, nc, tok); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if got, err := verify(t, nc, tok); err != nil || got.UserID != "erin" {
		t.Fatalf("after stopping one instance: %+v, %v", got, err)
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, nc, tok); !errors.Is(err, natsx.ErrUnavailable) {
		t.Fatalf("after stopping both: err = %v, want unavailable", err)
	}
}

func TestStartConfig(t *testing.T) {
	long := strings.Repeat("k", MinSecretLen)
	cases := []struct {
		name    string
		cfg     Config
		opts    []Option
		wantErr string // "" means Start succeeds
	}{
		{"default config", DefaultConfig(), nil, "auth: firebase.project_id is required (or set verifier: jwt or oidc)"},
		{"unknown verifier", Config{Verifier: "ldap"}, nil, `unknown verifier "ldap"`},
		{"empty verifier", Config{}, nil, `unknown verifier ""`},
		{"jwt without secret", Config{Verifier: VerifierJWT}, nil, "jwt.secret is required"},
		{"jwt without secret, dev", Config{Verifier: VerifierJWT}, []Option{WithDevSecret()}, "jwt.secret is required"},
		{"dev secret", Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: DevSecret}}, nil, "development secret"},
		{"short secret", Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: long[1:]}}, nil, "too short"},
		{"dev secret, dev", Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: DevSecret}}, []Option{WithDevSecret()}, ""},
		{"short secret, dev", Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: "dev"}}, []Option{WithDevSecret()}, ""},
		{"32-byte secret", Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: long}}, nil, ""},
		{"claims without a size", Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: long}, Claims: []string{"role"}}, nil, "max_claims_bytes"},
		{"empty claim name", Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: long}, Claims: []string{""}, MaxClaimsBytes: 100}, nil, "empty name"},
		{"oidc without issuer", oidcWith(func(c *OIDCConfig) { c.Issuer = "" }), nil, "oidc.issuer: is required"},
		{"oidc plain http issuer", oidcWith(func(c *OIDCConfig) { c.Issuer = "http://idp.example.com" }), nil, "must be an https URL"},
		{"oidc bad jwks url", oidcWith(func(c *OIDCConfig) { c.JWKSURL = "ftp://idp.example.com/keys" }), nil, "oidc.jwks_url"},
		{"oidc without audience", oidcWith(func(c *OIDCConfig) { c.Audience = "" }), nil, "audience is required"},
		{"oidc HS256", oidcWith(func(c *OIDCConfig) { c.Algorithms = []string{"HS256"} }), nil, `"HS256" is not one of`},
		{"oidc none", oidcWith(func(c *OIDCConfig) { c.Algorithms = []string{"none"} }), nil, `"none" is not one of`},
		{"oidc no algorithms", oidcWith(func(c *OIDCConfig) { c.Algorithms = nil }), nil, "algorithms is empty"},
		{"oidc large leeway", oidcWith(func(c *OIDCConfig) { c.Leeway = time.Hour }), nil, "leeway"},
		{"oidc keys age", oidcWith(func(c *OIDCConfig) { c.KeysMaxAge = c.RefreshInterval }), nil, "keys_max_age"},
		{"oidc ok (keys not reachable yet)", oidcWith(nil), nil, ""},
		{"firebase revocation cache", func() Config {
			c := DefaultConfig()
			c.Firebase.ProjectID, c.Firebase.CheckRevoked, c.Firebase.RevocationCacheSize = "p", true, 0
			return c
		}(), nil, "revocation_cache_size"},
	}
	s := natstest.Run(t)
	nc := s.Conn(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc, err := Start(context.Background(), discardLog(), nc, tc.cfg, tc.opts...)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Start: %v", err)
				}
				if err := svc.Stop(); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				_ = svc.Stop()
				t.Fatalf("Start succeeded, want error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// The dev secret works end to end only with WithDevSecret.
func TestDevSecretService(t *testing.T) {
	nc := startService(t, discardLog(), Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: DevSecret}}, WithDevSecret())
	tok, err := MintToken(DevSecret, "", "", "dev-user", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, err := verify(t, nc, tok)
	if err != nil || got.UserID != "dev-user" {
		t.Fatalf("reply %+v, err %v", got, err)
	}
}

// No log line holds a token or any of its parts, whatever the outcome.
func TestNoTokenInLogs(t *testing.T) {
	var logs logBuffer
	nc := startService(t, debugLog(&logs), jwtConfig())

	good, err := MintToken(testSecret, "", "", "frank", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, err := MintToken("a different secret of sufficient length", "", "", "frank", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := MintToken(testSecret, "", "", "frank", -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	badSub := sign(t, jwt.SigningMethodHS256, []byte(testSecret), claimsFor("frank\nroot"))
	garbage := "s3cr3t-garbage-token-value"

	if got, err := verify(t, nc, good); err != nil || got.UserID != "frank" {
		t.Fatalf("good token: %+v, %v", got, err)
	}
	for _, tok := range []string{wrongKey, expired, badSub, garbage} {
		_, err := verify(t, nc, tok)
		wantCode(t, err, api.CodeUnauthorized)
	}
	// A malformed body that carries a token.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := natsx.RequestMsg(ctx, nc, &nats.Msg{Subject: subject.AuthVerify, Data: []byte(`{"token":["` + good + `"]}`)})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, natsx.ErrorFromMsg(reply), api.CodeBadRequest)

	out := logs.String()
	if !strings.Contains(out, "uid=frank") || !strings.Contains(out, "outcome=ok") || !strings.Contains(out, "outcome=rejected") {
		t.Fatalf("expected debug lines for both outcomes, got:\n%s", out)
	}
	for _, tok := range []string{good, wrongKey, expired, badSub, garbage} {
		for _, part := range append(strings.Split(tok, "."), tok) {
			if len(part) >= 8 && strings.Contains(out, part) {
				t.Fatalf("log holds (part of) a token %q:\n%s", part, out)
			}
		}
	}
}

// oidcWith is a valid oidc configuration (keys on an unused loopback
// port) changed by f.
func oidcWith(f func(*OIDCConfig)) Config {
	c := DefaultConfig()
	c.Verifier = VerifierOIDC
	c.OIDC.Issuer = "https://idp.example.com"
	c.OIDC.JWKSURL = "http://127.0.0.1:1/keys"
	c.OIDC.Audience = "switchboard"
	c.OIDC.HTTPTimeout = 200 * time.Millisecond
	if f != nil {
		f(&c.OIDC)
	}
	return c
}
