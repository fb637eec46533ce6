package authsvc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// fakeGoogle stands in for the Google endpoints the Firebase Admin SDK
// calls in production: the ID-token signing certificates (with
// Cache-Control max-age, as Google serves them), the OAuth token endpoint of
// service accounts and Identity Toolkit's accounts:lookup. It listens with
// TLS under a certificate for *.googleapis.com, and http.DefaultTransport
// (which the SDK's clients copy) dials it for every address, so the SDK
// runs its production code unchanged.
type fakeGoogle struct {
	mu          sync.Mutex
	certs       map[string]string // kid → PEM certificate
	maxAge      int               // seconds, for the certificates
	failing     bool              // certificates and lookups answer 500
	certFetches int
	lookups     int
	users       map[string]fakeUser
}

type fakeUser struct {
	disabled   bool
	validSince int64 // unix s; tokens issued before are revoked
}

// googleKey is a signing key of the fake: an RSA key and its certificate.
type googleKey struct {
	kid  string
	key  *rsa.PrivateKey
	cert string // PEM
}

func newGoogleKey(t *testing.T, kid string) googleKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "securetoken.system.gserviceaccount.com"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return googleKey{kid: kid, key: key, cert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// startFakeGoogle serves the fake and routes http.DefaultTransport to it
// until the test ends. Tests using it must not run in parallel.
func startFakeGoogle(t *testing.T, keys ...googleKey) *fakeGoogle {
	t.Helper()
	t.Setenv(emulatorEnv, "")
	g := &fakeGoogle{certs: map[string]string{}, maxAge: 3600, users: map[string]fakeUser{}}
	for _, k := range keys {
		g.certs[k.kid] = k.cert
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(g.serve))
	cert, pool := googleTLS(t)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	old := http.DefaultTransport
	http.DefaultTransport = &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}
	t.Cleanup(func() { http.DefaultTransport = old })
	return g
}

// googleTLS makes a self-signed certificate for Google's API hosts and the
// pool that trusts it.
func googleTLS(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "googleapis.com"},
		DNSNames:              []string{"googleapis.com", "*.googleapis.com"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(parsed)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

func (g *fakeGoogle) serve(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	defer g.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Host == "www.googleapis.com" && r.URL.Path == "/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com":
		g.certFetches++
		if g.failing {
			http.Error(w, `{"error":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d, must-revalidate, no-transform", g.maxAge))
		_ = json.NewEncoder(w).Encode(g.certs)
	case r.Host == "oauth2.googleapis.com" && r.URL.Path == "/token":
		_, _ = w.Write([]byte(`{"access_token":"fake-access-token","token_type":"Bearer","expires_in":3600}`))
	case r.Host == "identitytoolkit.googleapis.com" && r.URL.Path == "/v1/projects/"+testProject+"/accounts:lookup":
		g.lookups++
		if g.failing {
			http.Error(w, `{"error":{"message":"INTERNAL_ERROR"}}`, http.StatusInternalServerError)
			return
		}
		if r.Header.Get("Authorization") != "Bearer fake-access-token" {
			http.Error(w, `{"error":{"message":"UNAUTHENTICATED"}}`, http.StatusUnauthorized)
			return
		}
		serveLookup(w, r, func(uid string) (lookupUser, bool) {
			u, ok := g.users[uid]
			return lookupUser{Disabled: u.disabled, ValidSince: fmt.Sprint(u.validSince)}, ok
		})
	default:
		http.Error(w, `{"error":"not found"}`, http.StatusNotFound)
	}
}

func (g *fakeGoogle) set(f func(g *fakeGoogle)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(g)
}

func (g *fakeGoogle) counts() (certFetches, lookups int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.certFetches, g.lookups
}

// sign makes an RS256 ID token with k for claims (kid in the header).
func (k googleKey) sign(t *testing.T, claims map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims(claims))
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rawToken assembles a token from a header and claims with the given
// signature function (nil: no signature).
func rawToken(t *testing.T, header, claims map[string]any, sig func(signed string) []byte) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(header) + "." + enc(claims)
	if sig == nil {
		return signed + "."
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig(signed))
}

func hs256(key []byte) func(string) []byte {
	return func(signed string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(signed))
		return m.Sum(nil)
	}
}

// withClaims returns idClaims(uid) changed by f.
func withClaims(uid string, f func(map[string]any)) map[string]any {
	c := idClaims(uid)
	if f != nil {
		f(c)
	}
	return c
}
