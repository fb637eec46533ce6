package authsvc

import (
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// The production path: tokens signed with an RSA key whose certificate the
// fake Google serves, verified by the SDK's own code.
func TestFirebaseProductionPath(t *testing.T) {
	key := newGoogleKey(t, "key-1")
	other := newGoogleKey(t, "key-1") // same kid, another key
	g := startFakeGoogle(t, key)
	cfg := firebaseConfig()
	cfg.Claims = []string{"role", "tenant"}
	cfg.MaxClaimsBytes = 4096
	nc := startService(t, discardLog(), cfg)

	claims := withClaims("grace", func(c map[string]any) { c["role"] = "admin"; c["plan"] = "pro" })
	got, err := verify(t, nc, key.sign(t, claims))
	if err != nil {
		t.Fatalf("good token: %v", err)
	}
	wantExp := time.Unix(claims["exp"].(int64), 0)
	if got.UserID != "grace" || got.Name != "Grace H." || !got.Expires.Equal(wantExp) || string(got.Claims) != `{"role":"admin"}` {
		t.Fatalf("reply = %+v (claims %s), want grace / Grace H. / %v / role only", got, got.Claims, wantExp)
	}

	block, _ := pem.Decode([]byte(key.cert))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	past := time.Now().Add(-2 * time.Hour).Unix()
	refused := []struct {
		name  string
		token string
	}{
		{"wrong key", other.sign(t, idClaims("grace"))},
		{"unknown kid", googleKey{kid: "key-9", key: key.key}.sign(t, idClaims("grace"))},
		{"expired", key.sign(t, withClaims("grace", func(c map[string]any) { c["exp"] = past; c["iat"] = past - 3600 }))},
		{"iat in the future", key.sign(t, withClaims("grace", func(c map[string]any) { c["iat"] = time.Now().Add(time.Hour).Unix() }))},
		{"wrong audience", key.sign(t, withClaims("grace", func(c map[string]any) { c["aud"] = "other-project" }))},
		{"wrong issuer", key.sign(t, withClaims("grace", func(c map[string]any) { c["iss"] = "https://securetoken.google.com/other-project" }))},
		{"empty sub", key.sign(t, idClaims(""))},
		{"sub too long", key.sign(t, idClaims(strings.Repeat("g", MaxUIDLen+1)))},
		{"alg none", rawToken(t, map[string]any{"alg": "none", "kid": "key-1", "typ": "JWT"}, idClaims("grace"), nil)},
		{"HS256 with the certificate", rawToken(t, map[string]any{"alg": "HS256", "kid": "key-1", "typ": "JWT"}, idClaims("grace"), hs256([]byte(key.cert)))},
		{"HS256 with the public key", rawToken(t, map[string]any{"alg": "HS256", "kid": "key-1", "typ": "JWT"}, idClaims("grace"), hs256(pubPEM))},
		{"claims too large", key.sign(t, withClaims("grace", func(c map[string]any) { c["tenant"] = strings.Repeat("t", 5000) }))},
	}
	v, err := newFirebaseVerifier(t.Context(), cfg.Firebase, claimPicker{names: cfg.Claims, max: cfg.MaxClaimsBytes})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify(t, nc, tc.token)
			wantCode(t, err, api.CodeUnauthorized)
			if _, err := v.Verify(t.Context(), tc.token); !IsRejected(err) {
				t.Fatalf("Verify: err = %v, want a rejection", err)
			}
		})
	}
	// The certificates were fetched once by each verifier (the service's
	// and v), and served from their caches since.
	if fetches, _ := g.counts(); fetches != 2 {
		t.Fatalf("certificate fetches = %d, want 2 (one per verifier)", fetches)
	}
}

// Keys are cached for the max-age Google sends; while the endpoint is down
// the cached keys keep working until they expire, then verification is an
// internal fault (the gateway's "Service unavailable"), never a refusal.
func TestFirebaseKeyCache(t *testing.T) {
	key := newGoogleKey(t, "key-1")
	g := startFakeGoogle(t, key)
	g.set(func(g *fakeGoogle) { g.maxAge = 3 })
	nc := startService(t, discardLog(), firebaseConfig())
	tok := key.sign(t, idClaims("grace"))
	start := time.Now()
	for i := range 20 {
		if _, err := verify(t, nc, tok); err != nil {
			t.Fatalf("verify %d: %v", i, err)
		}
	}
	if fetches, _ := g.counts(); fetches != 1 {
		t.Fatalf("fetches after 20 verifications = %d, want 1", fetches)
	}

	g.set(func(g *fakeGoogle) { g.failing = true })
	if _, err := verify(t, nc, tok); err != nil {
		t.Fatalf("endpoint down, keys cached: %v", err)
	}
	if d := time.Since(start); d >= 3*time.Second {
		t.Fatalf("the checks within the max-age took %v", d)
	}
	time.Sleep(time.Until(start.Add(3100 * time.Millisecond)))
	_, err := verify(t, nc, tok)
	wantCode(t, err, api.CodeInternal)
	if fetches, _ := g.counts(); fetches != 2 {
		t.Fatalf("fetches = %d, want 2 (the failed refresh)", fetches)
	}

	g.set(func(g *fakeGoogle) { g.failing = false })
	if _, err := verify(t, nc, tok); err != nil {
		t.Fatalf("endpoint back: %v", err)
	}
	if fetches, _ := g.counts(); fetches != 3 {
		t.Fatalf("fetches = %d, want 3", fetches)
	}
}

// check_revoked looks users up with the service account's credentials;
// disabled, revoked and unknown users are refused, a failing lookup is an
// internal fault, and a user who passed is not looked up again within the
// cache's time to live.
func TestFirebaseCheckRevoked(t *testing.T) {
	key := newGoogleKey(t, "key-1")
	g := startFakeGoogle(t, key)
	now := time.Now().Unix()
	g.set(func(g *fakeGoogle) {
		g.users["grace"] = fakeUser{}
		g.users["mallory"] = fakeUser{disabled: true}
		g.users["rev"] = fakeUser{validSince: now}
	})
	cfg := firebaseConfig()
	cfg.Firebase.CredentialsFile = serviceAccountFile(t)
	cfg.Firebase.CheckRevoked = true
	cfg.Firebase.RevocationCacheTTL = 2 * time.Second
	cfg.Firebase.RevocationCacheSize = 100
	nc := startService(t, discardLog(), cfg)

	grace := key.sign(t, idClaims("grace"))
	for i := range 5 {
		if got, err := verify(t, nc, grace); err != nil || got.UserID != "grace" {
			t.Fatalf("grace %d: %+v, %v", i, got, err)
		}
	}
	if _, lookups := g.counts(); lookups != 1 {
		t.Fatalf("lookups for 5 verifications = %d, want 1 (cached)", lookups)
	}
	issuedBefore := func(uid string) map[string]any {
		return withClaims(uid, func(c map[string]any) { c["iat"] = now - 60; c["auth_time"] = now - 60 })
	}
	for name, tok := range map[string]string{
		"disabled":     key.sign(t, idClaims("mallory")),
		"revoked":      key.sign(t, issuedBefore("rev")),
		"unknown user": key.sign(t, idClaims("nobody")),
	} {
		_, err := verify(t, nc, tok)
		if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		wantCode(t, err, api.CodeUnauthorized)
	}
	// A token issued after the revocation passes.
	if _, err := verify(t, nc, key.sign(t, withClaims("rev", func(c map[string]any) { c["iat"] = now + 1 }))); err != nil {
		t.Fatalf("token issued after the revocation: %v", err)
	}

	// Revoking grace takes effect once the cache entry is older than its
	// time to live.
	g.set(func(g *fakeGoogle) { g.users["grace"] = fakeUser{validSince: time.Now().Unix() + 1} })
	if _, err := verify(t, nc, grace); err != nil {
		t.Fatalf("grace right after the revocation (cached): %v", err)
	}
	time.Sleep(2100 * time.Millisecond)
	_, err := verify(t, nc, grace)
	wantCode(t, err, api.CodeUnauthorized)

	g.set(func(g *fakeGoogle) { g.failing = true; g.maxAge = 3600 })
	_, err = verify(t, nc, key.sign(t, idClaims("newcomer")))
	wantCode(t, err, api.CodeInternal)
}

// check_revoked needs credentials: without a file, the environment's
// default ones; none at all fails the start with a clear error.
func TestFirebaseCheckRevokedNeedsCredentials(t *testing.T) {
	t.Setenv(emulatorEnv, "")
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(t.TempDir(), "none.json"))
	cfg := firebaseConfig()
	cfg.Firebase.CheckRevoked = true
	cfg.Firebase.RevocationCacheTTL = time.Second
	cfg.Firebase.RevocationCacheSize = 10
	nc := natstest.Run(t).Conn(t)
	svc, err := Start(t.Context(), discardLog(), nc, cfg)
	if err == nil {
		_ = svc.Stop()
		t.Fatal("Start succeeded without credentials")
	}
	if !strings.Contains(err.Error(), "firebase") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
}
