package authsvc

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

const (
	testProject = "sb-test-project"
	emulatorEnv = "FIREBASE_AUTH_EMULATOR_HOST"
)

// authEmulator stands in for the Firebase Auth emulator's accounts:lookup
// endpoint, the one call the Admin SDK makes while verifying an ID token in
// emulator mode (it checks that the user exists, is enabled and that the
// token was not revoked).
type authEmulator struct {
	mu       sync.Mutex
	users    map[string]bool // uid -> disabled
	failing  bool            // answer lookups with HTTP 500
	requests int
}

func startAuthEmulator(t *testing.T) *authEmulator {
	t.Helper()
	e := &authEmulator{users: map[string]bool{}}
	srv := httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(srv.Close)
	t.Setenv(emulatorEnv, strings.TrimPrefix(srv.URL, "http://"))
	return e
}

func (e *authEmulator) addUser(uid string, disabled bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.users[uid] = disabled
}

func (e *authEmulator) setFailing(v bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failing = v
}

func (e *authEmulator) serve(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests++
	want := "/identitytoolkit.googleapis.com/v1/projects/" + testProject + "/accounts:lookup"
	if r.Method != http.MethodPost || r.URL.Path != want {
		http.Error(w, `{"error":{"message":"NOT_FOUND"}}`, http.StatusNotFound)
		return
	}
	if e.failing {
		http.Error(w, `{"error":{"message":"INTERNAL_ERROR"}}`, http.StatusInternalServerError)
		return
	}
	serveLookup(w, r, func(uid string) (lookupUser, bool) {
		disabled, ok := e.users[uid]
		return lookupUser{Disabled: disabled}, ok
	})
}

// lookupUser is a user in an accounts:lookup answer.
type lookupUser struct {
	LocalID    string `json:"localId"`
	Disabled   bool   `json:"disabled,omitempty"`
	ValidSince string `json:"validSince,omitempty"`
}

// serveLookup answers an accounts:lookup request with the users find knows.
func serveLookup(w http.ResponseWriter, r *http.Request, find func(uid string) (lookupUser, bool)) {
	var req struct {
		LocalID []string `json:"localId"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"message":"INVALID_REQUEST"}}`, http.StatusBadRequest)
		return
	}
	var resp struct {
		Users []lookupUser `json:"users,omitempty"`
	}
	for _, uid := range req.LocalID {
		if u, ok := find(uid); ok {
			u.LocalID = uid
			resp.Users = append(resp.Users, u)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// emulatorToken builds an unsigned ID token like the emulator issues.
func emulatorToken(t *testing.T, claims map[string]any) string {
	t.Helper()
	return rawToken(t, map[string]any{"alg": "none", "typ": "JWT"}, claims, nil)
}

// idClaims are the claims of a valid ID token of testProject for uid.
func idClaims(uid string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":       "https://securetoken.google.com/" + testProject,
		"aud":       testProject,
		"sub":       uid,
		"user_id":   uid,
		"name":      "Grace H.",
		"iat":       now.Unix(),
		"auth_time": now.Unix(),
		"exp":       now.Add(time.Hour).Unix(),
		"firebase":  map[string]any{"sign_in_provider": "password", "identities": map[string]any{}},
	}
}

func firebaseConfig() Config {
	return Config{Verifier: VerifierFirebase, Firebase: FirebaseConfig{ProjectID: testProject}}
}

func TestFirebaseEmulatorMode(t *testing.T) {
	emu := startAuthEmulator(t)
	emu.addUser("grace", false)
	emu.addUser("mallory", true)
	emu.addUser(strings.Repeat("g", 128), false)
	emu.addUser("line\nbreak", false)
	nc := startService(t, discardLog(), firebaseConfig())

	claims := idClaims("grace")
	got, err := verify(t, nc, emulatorToken(t, claims))
	if err != nil {
		t.Fatalf("valid token: %v", err)
	}
	wantExp := time.Unix(claims["exp"].(int64), 0)
	if got.UserID != "grace" || got.Name != "Grace H." || !got.Expires.Equal(wantExp) {
		t.Fatalf("reply = %+v, want grace / Grace H. / %v", got, wantExp)
	}

	with := func(uid string, f func(map[string]any)) string {
		c := idClaims(uid)
		f(c)
		return emulatorToken(t, c)
	}
	long := strings.Repeat("g", 128)
	if got, err := verify(t, nc, with(long, func(map[string]any) {})); err != nil || got.UserID != long {
		t.Fatalf("128-byte uid: %+v, %v", got, err)
	}

	past := time.Now().Add(-2 * time.Hour).Unix()
	rejected := []struct{ name, token, reason string }{
		{"wrong project (aud)", with("grace", func(c map[string]any) { c["aud"] = "other-project" }), "invalid"},
		{"wrong issuer", with("grace", func(c map[string]any) { c["iss"] = "https://securetoken.google.com/other-project" }), "invalid"},
		{"session cookie iss", with("grace", func(c map[string]any) { c["iss"] = "https://session.firebase.google.com/" + testProject }), "invalid"},
		{"expired", with("grace", func(c map[string]any) { c["exp"] = past; c["iat"] = past - 3600 }), "expired"},
		{"issued in the future", with("grace", func(c map[string]any) { c["iat"] = time.Now().Add(time.Hour).Unix() }), "invalid"},
		{"empty sub", with("", func(map[string]any) {}), "invalid"},
		{"sub too long", with(strings.Repeat("g", 129), func(map[string]any) {}), "invalid"},
		{"sub with newline", with("line\nbreak", func(map[string]any) {}), "subject has control characters"},
		{"unknown user", with("nobody", func(map[string]any) {}), "unknown user"},
		{"disabled user", with("mallory", func(map[string]any) {}), "user disabled"},
		{"garbage", "garbage", "invalid"},
		{"two segments", "eyJhbGciOiJub25lIn0.e30", "invalid"},
		{"bad base64", "!!!.???.", "invalid"},
		{"empty", "", "empty"},
		{"too long", strings.Repeat("a", 1<<20-64), "too long"},
	}
	v, err := newFirebaseVerifier(t.Context(), firebaseConfig().Firebase, claimPicker{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify(t, nc, tc.token)
			wantCode(t, err, api.CodeUnauthorized)
			_, err = v.Verify(t.Context(), tc.token)
			var rej *RejectError
			if !errorsAs(err, &rej) || rej.Reason != tc.reason {
				t.Fatalf("Verify: err = %v, want rejection %q", err, tc.reason)
			}
		})
	}
	emu.mu.Lock()
	defer emu.mu.Unlock()
	if emu.requests == 0 {
		t.Fatal("the SDK never consulted the emulator")
	}
}

// A fault of the backing service is a 500, not a rejected token.
func TestFirebaseInternalFault(t *testing.T) {
	emu := startAuthEmulator(t)
	emu.addUser("grace", false)
	var logs logBuffer
	nc := startService(t, debugLog(&logs), firebaseConfig())
	tok := emulatorToken(t, idClaims("grace"))
	emu.setFailing(true)
	_, err := verify(t, nc, tok)
	wantCode(t, err, api.CodeInternal)
	if out := logs.String(); strings.Contains(out, strings.Split(tok, ".")[1]) {
		t.Fatalf("log holds the token:\n%s", out)
	}
	emu.setFailing(false)
	if got, err := verify(t, nc, tok); err != nil || got.UserID != "grace" {
		t.Fatalf("after recovery: %+v, %v", got, err)
	}
}

// Outside emulator mode the SDK insists on signed tokens: an emulator-style
// token is refused without any network access (no key id), with or without a
// credentials file.
func TestFirebaseProductionRefusesUnsigned(t *testing.T) {
	t.Setenv(emulatorEnv, "") // the SDK treats an empty value as unset
	withCreds := firebaseConfig()
	withCreds.Firebase.CredentialsFile = serviceAccountFile(t)
	for name, cfg := range map[string]Config{"no credentials": firebaseConfig(), "credentials file": withCreds} {
		t.Run(name, func(t *testing.T) {
			nc := startService(t, discardLog(), cfg)
			for _, tok := range []string{emulatorToken(t, idClaims("grace")), "garbage", ""} {
				_, err := verify(t, nc, tok)
				wantCode(t, err, api.CodeUnauthorized)
			}
		})
	}
}

func TestFirebaseBadCredentialsFile(t *testing.T) {
	t.Setenv(emulatorEnv, "")
	cfg := firebaseConfig()
	cfg.Firebase.CredentialsFile = filepath.Join(t.TempDir(), "missing.json")
	nc := natstest.Run(t).Conn(t)
	if _, err := Start(t.Context(), discardLog(), nc, cfg); err == nil {
		t.Fatal("Start succeeded with a missing credentials file")
	}
}

// serviceAccountFile writes a service-account key file with a fresh key.
func serviceAccountFile(t *testing.T) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sa := map[string]string{
		"type":           "service_account",
		"project_id":     testProject,
		"private_key_id": "test-key",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   "svc@" + testProject + ".iam.gserviceaccount.com",
		"client_id":      "1",
		"token_uri":      "https://oauth2.googleapis.com/token",
	}
	b, err := json.Marshal(sa)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
