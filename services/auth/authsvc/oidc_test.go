package authsvc

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// idpKey is a signing key of the test identity provider.
type idpKey struct {
	kid    string
	method jwt.SigningMethod
	priv   crypto.Signer
}

func newIDPKey(t *testing.T, kid string, method jwt.SigningMethod) idpKey {
	t.Helper()
	var (
		priv crypto.Signer
		err  error
	)
	switch method.Alg() {
	case "RS256", "RS384":
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("no key for %s", method.Alg())
	}
	if err != nil {
		t.Fatal(err)
	}
	return idpKey{kid: kid, method: method, priv: priv}
}

// jwk is the key's public JSON Web Key.
func (k idpKey) jwk() map[string]any {
	b64 := base64.RawURLEncoding.EncodeToString
	m := map[string]any{"kid": k.kid, "use": "sig"}
	switch pub := k.priv.Public().(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", b64(pub.N.Bytes()), b64(big.NewInt(int64(pub.E)).Bytes())
	case *ecdsa.PublicKey:
		b, err := pub.Bytes() // 0x04 || X || Y
		if err != nil {
			panic(err)
		}
		m["kty"], m["crv"], m["x"], m["y"] = "EC", "P-256", b64(b[1:33]), b64(b[33:65])
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", b64(pub)
	}
	return m
}

func (k idpKey) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, jwt.MapClaims(claims))
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeIDP serves a discovery document and a JWKS that tests can change.
type fakeIDP struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    []idpKey
	failing bool
	fetches int
	issuer  string // issuer the discovery document names ("" = its own URL)
}

func startIDP(t *testing.T, keys ...idpKey) *fakeIDP {
	t.Helper()
	p := &fakeIDP{keys: keys}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *fakeIDP) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/.well-known/openid-configuration":
		iss := p.issuer
		if iss == "" {
			iss = p.srv.URL
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": iss, "jwks_uri": p.srv.URL + "/keys"})
	case "/keys":
		p.fetches++
		if p.failing {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		set := []map[string]any{}
		for _, k := range p.keys {
			set = append(set, k.jwk())
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": set})
	default:
		http.NotFound(w, r)
	}
}

func (p *fakeIDP) set(f func(p *fakeIDP)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *fakeIDP) fetchCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fetches
}

const oidcAudience = "switchboard-app"

// oidcConfig is an oidc configuration for p (keys at its /keys).
func (p *fakeIDP) config(f func(*OIDCConfig)) Config {
	c := DefaultConfig()
	c.Verifier = VerifierOIDC
	c.OIDC.Issuer = p.srv.URL
	c.OIDC.JWKSURL = p.srv.URL + "/keys"
	c.OIDC.Audience = oidcAudience
	if f != nil {
		f(&c.OIDC)
	}
	return c
}

// oidcClaims are valid claims of a token of p for uid, changed by f.
func (p *fakeIDP) claims(uid string, f func(map[string]any)) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": p.srv.URL,
		"aud": []string{oidcAudience, "other"},
		"sub": uid,
		"iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	if f != nil {
		f(c)
	}
	return c
}

func TestOIDCVerifier(t *testing.T) {
	rs := newIDPKey(t, "rs", jwt.SigningMethodRS256)
	es := newIDPKey(t, "es", jwt.SigningMethodES256)
	ed := newIDPKey(t, "ed", jwt.SigningMethodEdDSA)
	rs384 := newIDPKey(t, "rs384", jwt.SigningMethodRS384)
	stranger := newIDPKey(t, "rs", jwt.SigningMethodRS256) // the kid of rs, another key
	p := startIDP(t, rs, es, ed, rs384)
	cfg := p.config(nil)
	cfg.Claims = []string{"role", "tenant"}
	nc := startService(t, discardLog(), cfg)

	for _, k := range []idpKey{rs, es, ed} {
		t.Run("accepts "+k.method.Alg(), func(t *testing.T) {
			c := p.claims("ada", func(c map[string]any) { c["name"] = "Ada"; c["role"] = "admin"; c["email"] = "a@x" })
			got, err := verify(t, nc, k.sign(t, c))
			if err != nil {
				t.Fatal(err)
			}
			if got.UserID != "ada" || got.Name != "Ada" || !got.Expires.Equal(time.Unix(c["exp"].(int64), 0)) || string(got.Claims) != `{"role":"admin"}` {
				t.Fatalf("reply = %+v (claims %s)", got, got.Claims)
			}
		})
	}
	t.Run("accepts within the leeway", func(t *testing.T) {
		tok := rs.sign(t, p.claims("ada", func(c map[string]any) { c["exp"] = time.Now().Add(-10 * time.Second).Unix() }))
		if _, err := verify(t, nc, tok); err != nil {
			t.Fatal(err)
		}
	})

	pubDER, err := x509.MarshalPKIXPublicKey(rs.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	n := rs.priv.Public().(*rsa.PublicKey).N.Bytes()
	hour := time.Hour
	refused := []struct{ name, token string }{
		{"wrong key", stranger.sign(t, p.claims("ada", nil))},
		{"unknown kid", idpKey{kid: "nope", method: jwt.SigningMethodRS256, priv: rs.priv}.sign(t, p.claims("ada", nil))},
		{"algorithm not accepted (RS384)", rs384.sign(t, p.claims("ada", nil))},
		{"expired past the leeway", rs.sign(t, p.claims("ada", func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))},
		{"no exp", rs.sign(t, p.claims("ada", func(c map[string]any) { delete(c, "exp") }))},
		{"iat in the future", rs.sign(t, p.claims("ada", func(c map[string]any) { c["iat"] = time.Now().Add(hour).Unix() }))},
		{"nbf in the future", rs.sign(t, p.claims("ada", func(c map[string]any) { c["nbf"] = time.Now().Add(hour).Unix() }))},
		{"wrong audience", rs.sign(t, p.claims("ada", func(c map[string]any) { c["aud"] = "other" }))},
		{"no audience", rs.sign(t, p.claims("ada", func(c map[string]any) { delete(c, "aud") }))},
		{"wrong issuer", rs.sign(t, p.claims("ada", func(c map[string]any) { c["iss"] = "https://evil.example.com" }))},
		{"empty sub", rs.sign(t, p.claims("", nil))},
		{"sub not a string", rs.sign(t, p.claims("ada", func(c map[string]any) { c["sub"] = 42 }))},
		{"sub too long", rs.sign(t, p.claims(strings.Repeat("a", MaxUIDLen+1), nil))},
		{"claims too large", rs.sign(t, p.claims("ada", func(c map[string]any) { c["tenant"] = strings.Repeat("t", 5000) }))},
		{"alg none", rawToken(t, map[string]any{"alg": "none", "kid": "rs"}, p.claims("ada", nil), nil)},
		{"HS256 with the public key", rawToken(t, map[string]any{"alg": "HS256", "kid": "rs"}, p.claims("ada", nil), hs256(pubPEM))},
		{"HS256 with the modulus", rawToken(t, map[string]any{"alg": "HS256", "kid": "rs"}, p.claims("ada", nil), hs256(n))},
		{"garbage", "a.b.c"},
	}
	for _, tc := range refused {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			_, err := verify(t, nc, tc.token)
			wantCode(t, err, api.CodeUnauthorized)
		})
	}

	t.Run("uid from another claim", func(t *testing.T) {
		nc := startService(t, discardLog(), p.config(func(c *OIDCConfig) { c.UIDClaim = "user_id" }))
		got, err := verify(t, nc, es.sign(t, p.claims("ignored", func(c map[string]any) { c["user_id"] = "u-42" })))
		if err != nil || got.UserID != "u-42" {
			t.Fatalf("got %+v, %v; want u-42", got, err)
		}
		_, err = verify(t, nc, es.sign(t, p.claims("ada", nil)))
		wantCode(t, err, api.CodeUnauthorized)
	})
}

// A token signed with a new key makes the verifier fetch the set again
// (rate limited); keys gone from the set are no longer trusted.
func TestOIDCKeyRotation(t *testing.T) {
	old := newIDPKey(t, "2026-01", jwt.SigningMethodRS256)
	next := newIDPKey(t, "2026-02", jwt.SigningMethodES256)
	p := startIDP(t, old)
	nc := startService(t, discardLog(), p.config(func(c *OIDCConfig) { c.RefreshMinInterval = time.Hour }))
	oldTok := old.sign(t, p.claims("ada", nil))
	if _, err := verify(t, nc, oldTok); err != nil {
		t.Fatal(err)
	}
	if n := p.fetchCount(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}
	p.set(func(p *fakeIDP) { p.keys = []idpKey{next} })
	if got, err := verify(t, nc, next.sign(t, p.claims("bob", nil))); err != nil || got.UserID != "bob" {
		t.Fatalf("token of the new key: %+v, %v", got, err)
	}
	if n := p.fetchCount(); n != 2 {
		t.Fatalf("fetches = %d, want 2 (one for the unknown kid)", n)
	}
	_, err := verify(t, nc, oldTok)
	wantCode(t, err, api.CodeUnauthorized)
	// More unknown kids within refresh_min_interval fetch nothing.
	for i := range 5 {
		_, err := verify(t, nc, idpKey{kid: "guess", method: jwt.SigningMethodRS256, priv: old.priv}.sign(t, p.claims("eve", nil)))
		if err == nil {
			t.Fatalf("guess %d accepted", i)
		}
		wantCode(t, err, api.CodeUnauthorized)
	}
	if n := p.fetchCount(); n != 2 {
		t.Fatalf("fetches after 5 unknown kids = %d, want still 2", n)
	}
}

// While the key set cannot be fetched the keys at hand keep working for
// keys_max_age; past it, and before any key was fetched, tokens are an
// internal fault (the gateway's "Service unavailable"), never refused.
func TestOIDCKeysEndpointDown(t *testing.T) {
	k := newIDPKey(t, "k", jwt.SigningMethodRS256)
	p := startIDP(t, k)
	p.set(func(p *fakeIDP) { p.failing = true })
	cfg := p.config(func(c *OIDCConfig) {
		c.RefreshInterval = 300 * time.Millisecond
		c.KeysMaxAge = 1500 * time.Millisecond
		c.RefreshMinInterval = 50 * time.Millisecond
	})
	nc := startService(t, discardLog(), cfg) // starts while the keys are down
	tok := k.sign(t, p.claims("ada", nil))
	_, err := verify(t, nc, tok)
	wantCode(t, err, api.CodeInternal)

	p.set(func(p *fakeIDP) { p.failing = false })
	time.Sleep(100 * time.Millisecond)
	if _, err := verify(t, nc, tok); err != nil {
		t.Fatalf("keys back: %v", err)
	}
	p.set(func(p *fakeIDP) { p.failing = true })
	down := time.Now()
	time.Sleep(700 * time.Millisecond) // two failed refreshes
	if _, err := verify(t, nc, tok); err != nil {
		t.Fatalf("keys down for %v, within keys_max_age: %v", time.Since(down), err)
	}
	time.Sleep(time.Until(down.Add(1600 * time.Millisecond)))
	_, err = verify(t, nc, tok)
	wantCode(t, err, api.CodeInternal)
	// The next refresh brings the keys back.
	p.set(func(p *fakeIDP) { p.failing = false })
	time.Sleep(700 * time.Millisecond)
	if _, err := verify(t, nc, tok); err != nil {
		t.Fatalf("keys back again: %v", err)
	}
}

func TestOIDCDiscovery(t *testing.T) {
	k := newIDPKey(t, "k", jwt.SigningMethodEdDSA)
	p := startIDP(t, k)
	nc := startService(t, discardLog(), p.config(func(c *OIDCConfig) { c.JWKSURL = "" }))
	if got, err := verify(t, nc, k.sign(t, p.claims("ada", nil))); err != nil || got.UserID != "ada" {
		t.Fatalf("verify: %+v, %v", got, err)
	}

	p.set(func(p *fakeIDP) { p.issuer = "https://impostor.example.com" })
	_, err := Start(t.Context(), discardLog(), nc, p.config(func(c *OIDCConfig) { c.JWKSURL = "" }))
	if err == nil || !strings.Contains(err.Error(), "names issuer") {
		t.Fatalf("Start with a discovery document of another issuer: err = %v", err)
	}
}
