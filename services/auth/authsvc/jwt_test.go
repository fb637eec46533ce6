package authsvc

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "0123456789abcdef0123456789abcdef-test"

type testClaims struct {
	jwt.RegisteredClaims
	Name any `json:"name,omitempty"`
}

func sign(t *testing.T, m jwt.SigningMethod, key any, c jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// claimsFor returns claims that the verifier configured in TestJWTVerifier accepts.
func claimsFor(uid string) testClaims {
	now := time.Now()
	return testClaims{RegisteredClaims: jwt.RegisteredClaims{
		Subject:   uid,
		Issuer:    "issuer-1",
		Audience:  jwt.ClaimStrings{"aud-1"},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
	}}
}

func TestJWTVerifier(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	hs := func(c testClaims) string { return sign(t, jwt.SigningMethodHS256, []byte(testSecret), c) }
	with := func(f func(*testClaims)) testClaims { c := claimsFor("alice"); f(&c); return c }
	good := claimsFor("alice")
	good.Name = "Alice A."

	v := newJWTVerifier(JWTConfig{Secret: testSecret, Issuer: "issuer-1", Audience: "aud-1"}, claimPicker{})
	cases := []struct {
		name   string
		token  string
		uid    string // expected uid; "" means rejected
		reason string // expected rejection reason
	}{
		{name: "valid", token: hs(good), uid: "alice"},
		{name: "uid of 128 bytes", token: hs(with(func(c *testClaims) { c.Subject = strings.Repeat("u", 128) })), uid: strings.Repeat("u", 128)},
		{name: "unicode uid", token: hs(with(func(c *testClaims) { c.Subject = "zoë@example.com" })), uid: "zoë@example.com"},
		{name: "audience among several", token: hs(with(func(c *testClaims) { c.Audience = jwt.ClaimStrings{"x", "aud-1"} })), uid: "alice"},
		{name: "wrong secret", token: sign(t, jwt.SigningMethodHS256, []byte(testSecret+"x"), good), reason: "bad signature"},
		{name: "alg none", token: sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good), reason: "bad signature"},
		{name: "RS256 token", token: sign(t, jwt.SigningMethodRS256, rsaKey, good), reason: "bad signature"},
		{name: "HS256 keyed with the RSA public key", token: sign(t, jwt.SigningMethodHS256, pubPEM, good), reason: "bad signature"},
		{name: "HS512 with the right secret", token: sign(t, jwt.SigningMethodHS512, []byte(testSecret), good), reason: "bad signature"},
		{name: "expired", token: hs(with(func(c *testClaims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Second)) })), reason: "expired"},
		{name: "no exp", token: hs(with(func(c *testClaims) { c.ExpiresAt = nil })), reason: "missing claim"},
		{name: "nbf in the future", token: hs(with(func(c *testClaims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Minute)) })), reason: "not yet valid"},
		{name: "wrong issuer", token: hs(with(func(c *testClaims) { c.Issuer = "someone-else" })), reason: "wrong issuer"},
		{name: "no issuer", token: hs(with(func(c *testClaims) { c.Issuer = "" })), reason: "missing claim"},
		{name: "wrong audience", token: hs(with(func(c *testClaims) { c.Audience = jwt.ClaimStrings{"aud-2"} })), reason: "wrong audience"},
		{name: "no audience", token: hs(with(func(c *testClaims) { c.Audience = nil })), reason: "missing claim"},
		{name: "missing sub", token: hs(with(func(c *testClaims) { c.Subject = "" })), reason: "missing subject"},
		{name: "sub too long", token: hs(with(func(c *testClaims) { c.Subject = strings.Repeat("u", 129) })), reason: "subject too long"},
		{name: "sub with newline", token: hs(with(func(c *testClaims) { c.Subject = "alice\nadmin" })), reason: "subject has control characters"},
		{name: "sub with NUL", token: hs(with(func(c *testClaims) { c.Subject = "alice\x00" })), reason: "subject has control characters"},
		{name: "sub not a string", token: sign(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"sub": 42, "iss": "issuer-1", "aud": "aud-1", "exp": time.Now().Add(time.Hour).Unix()}), reason: "missing subject"},
		{name: "garbage", token: "this is not a jwt", reason: "malformed"},
		{name: "three garbage segments", token: "a.b.c", reason: "malformed"},
		{name: "empty", token: "", reason: "empty"},
		{name: "1 MB", token: strings.Repeat("a", 1<<20), reason: "too long"},
		{name: "signature stripped", token: strings.TrimRight(hs(good), "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"), reason: "bad signature"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := v.Verify(context.Background(), tc.token)
			if tc.uid != "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if got.UserID != tc.uid {
					t.Fatalf("uid = %q, want %q", got.UserID, tc.uid)
				}
				if got.Expires.IsZero() || got.Expires.Before(time.Now()) {
					t.Fatalf("exp = %v, want a future time", got.Expires)
				}
				return
			}
			var rej *RejectError
			if !errorsAs(err, &rej) {
				t.Fatalf("err = %v, want a rejection", err)
			}
			if rej.Reason != tc.reason {
				t.Fatalf("reason = %q, want %q", rej.Reason, tc.reason)
			}
		})
	}
}

func TestJWTVerifierName(t *testing.T) {
	v := newJWTVerifier(JWTConfig{Secret: testSecret}, claimPicker{})
	c := claimsFor("bob")
	c.Name = "Bob B."
	exp := c.ExpiresAt.Time.Truncate(time.Second)
	got, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, []byte(testSecret), c))
	if err != nil {
		t.Fatal(err)
	}
	if got.UserID != "bob" || got.Name != "Bob B." || !got.Expires.Equal(exp) {
		t.Fatalf("reply = %+v, want bob / Bob B. / %v", got, exp)
	}
	c.Name = 42 // not a string: ignored
	got, err = v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, []byte(testSecret), c))
	if err != nil || got.Name != "" {
		t.Fatalf("non-string name: reply %+v err %v, want empty name", got, err)
	}
}

func TestJWTVerifierWithoutIssuerAudience(t *testing.T) {
	v := newJWTVerifier(JWTConfig{Secret: testSecret}, claimPicker{})
	c := claimsFor("carol")
	c.Issuer, c.Audience = "", nil
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, []byte(testSecret), c)); err != nil {
		t.Fatalf("no iss/aud configured, none in token: %v", err)
	}
	c.Issuer, c.Audience = "anyone", jwt.ClaimStrings{"anything"}
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, []byte(testSecret), c)); err != nil {
		t.Fatalf("no iss/aud configured, some in token: %v", err)
	}
}

func TestMintToken(t *testing.T) {
	tok, err := MintToken(testSecret, "issuer-1", "aud-1", "dave", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v := newJWTVerifier(JWTConfig{Secret: testSecret, Issuer: "issuer-1", Audience: "aud-1"}, claimPicker{})
	got, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("verify minted token: %v", err)
	}
	if got.UserID != "dave" || got.Name != "" {
		t.Fatalf("reply = %+v", got)
	}
	if d := time.Until(got.Expires); d <= 0 || d > time.Minute {
		t.Fatalf("exp in %v, want within a minute", d)
	}
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Method.Alg() != "HS256" {
		t.Fatalf("alg = %s", parsed.Method.Alg())
	}
	claims := parsed.Claims.(jwt.MapClaims)
	for _, k := range []string{"sub", "iat", "exp", "iss", "aud"} {
		if _, ok := claims[k]; !ok {
			t.Errorf("claim %s missing", k)
		}
	}
	if _, ok := claims["name"]; ok {
		t.Errorf("name claim present")
	}

	bare, err := MintToken(testSecret, "", "", "dave", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	parsed, _, _ = jwt.NewParser().ParseUnverified(bare, jwt.MapClaims{})
	for _, k := range []string{"iss", "aud"} {
		if _, ok := parsed.Claims.(jwt.MapClaims)[k]; ok {
			t.Errorf("claim %s present without being asked for", k)
		}
	}

	expired, err := MintToken(testSecret, "", "", "dave", -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newJWTVerifier(JWTConfig{Secret: testSecret}, claimPicker{}).Verify(context.Background(), expired); !IsRejected(err) {
		t.Fatalf("negative ttl: err = %v, want rejection", err)
	}
	if _, err := MintToken("", "", "", "dave", time.Minute); err == nil {
		t.Fatal("empty secret accepted")
	}
	if _, err := MintToken(testSecret, "", "", "", time.Minute); err == nil {
		t.Fatal("empty uid accepted")
	}
}

func TestCheckUID(t *testing.T) {
	cases := []struct {
		uid string
		ok  bool
	}{
		{"alice", true},
		{"a.b*c>d e", true}, // subject-unsafe bytes are pkg/subject's job
		{strings.Repeat("é", 64), true},
		{strings.Repeat("é", 65), false}, // 130 bytes
		{"", false},
		{"bad\xff", false},
		{"tab\there", false},
		{"cr\r", false},
		{"del\x7f", false},
		{"c1\u0085", false},
	}
	for _, tc := range cases {
		err := checkUID(tc.uid)
		if (err == nil) != tc.ok {
			t.Errorf("checkUID(%q) = %v, want ok=%v", tc.uid, err, tc.ok)
		}
		if err != nil && !IsRejected(err) {
			t.Errorf("checkUID(%q) = %v, want a rejection", tc.uid, err)
		}
	}
}

func TestClaimPicker(t *testing.T) {
	all := map[string]any{"role": "admin", "tenant": "t1", "sub": "ada"}
	cases := []struct {
		name   string
		picker claimPicker
		want   string // "" = nil; "reject" = refused
	}{
		{"nothing listed", claimPicker{max: 100}, ""},
		{"none present", claimPicker{names: []string{"plan"}, max: 100}, ""},
		{"some present", claimPicker{names: []string{"role", "plan"}, max: 100}, `{"role":"admin"}`},
		{"two", claimPicker{names: []string{"tenant", "role"}, max: 100}, `{"role":"admin","tenant":"t1"}`},
		{"exactly at the bound", claimPicker{names: []string{"role"}, max: len(`{"role":"admin"}`)}, `{"role":"admin"}`},
		{"one byte over", claimPicker{names: []string{"role"}, max: len(`{"role":"admin"}`) - 1}, "reject"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.picker.pick(all)
			switch {
			case tc.want == "reject":
				if !IsRejected(err) {
					t.Fatalf("pick = %s, %v; want a rejection", got, err)
				}
			case err != nil || string(got) != tc.want:
				t.Fatalf("pick = %s, %v; want %s", got, err, tc.want)
			}
		})
	}
	// Through the JWT verifier.
	v := newJWTVerifier(JWTConfig{Secret: testSecret}, claimPicker{names: []string{"role"}, max: 64})
	tok := sign(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"sub": "ada", "role": []string{"a", "b"}, "exp": time.Now().Add(time.Hour).Unix()})
	got, err := v.Verify(t.Context(), tok)
	if err != nil || string(got.Claims) != `{"role":["a","b"]}` {
		t.Fatalf("Verify = %+v (claims %s), %v", got, got.Claims, err)
	}
}
