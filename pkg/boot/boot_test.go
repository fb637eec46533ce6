package boot

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

type svcConfig struct {
	NATS NATSConfig `koanf:"nats"`
	Log  LogConfig  `koanf:"log"`
	Auth struct {
		Secret string `koanf:"secret"`
	} `koanf:"auth"`
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		cfg     LogConfig
		ok      bool
		debug   bool
		jsonOut bool
	}{
		{LogConfig{Level: "info", Format: "text"}, true, false, false},
		{LogConfig{Level: "debug", Format: "JSON"}, true, true, true},
		{LogConfig{Level: "warn", Format: ""}, true, false, false},
		{LogConfig{Level: "loud", Format: "text"}, false, false, false},
		{LogConfig{Level: "info", Format: "xml"}, false, false, false},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		log, err := NewLogger(&buf, tt.cfg)
		if (err == nil) != tt.ok {
			t.Errorf("NewLogger(%+v) error = %v, want ok=%v", tt.cfg, err, tt.ok)
			continue
		}
		if !tt.ok {
			continue
		}
		log.Debug("dbg")
		if got := strings.Contains(buf.String(), "dbg"); got != tt.debug {
			t.Errorf("%+v: debug logged = %v", tt.cfg, got)
		}
		buf.Reset()
		log.Error("boom", "k", 1)
		if tt.jsonOut && !json.Valid(bytes.TrimSpace(buf.Bytes())) {
			t.Errorf("%+v: not JSON: %q", tt.cfg, buf.String())
		}
		if !strings.Contains(buf.String(), "boom") {
			t.Errorf("%+v: error not logged: %q", tt.cfg, buf.String())
		}
	}
}

func TestInit(t *testing.T) {
	cfg := svcConfig{NATS: DefaultNATS(), Log: DefaultLog()}
	var out bytes.Buffer
	log, rest, err := Init("auth", &cfg, &cfg.Log,
		[]string{"-log.format=json", "extra"},
		[]string{"SB_AUTH_SECRET=hunter2", "SB_NATS_REQUEST_TIMEOUT=750ms"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if log == nil || len(rest) != 1 || rest[0] != "extra" {
		t.Fatalf("log = %v, rest = %q", log, rest)
	}
	if cfg.NATS.Timeout != 750*time.Millisecond || cfg.Auth.Secret != "hunter2" || cfg.Log.Format != "json" {
		t.Errorf("cfg = %+v", cfg)
	}
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &line); err != nil {
		t.Fatalf("settings line is not JSON: %q", out.String())
	}
	if line["service"] != "auth" || line["auth.secret"] != "***" || line["nats.request_timeout"] != "750ms" || line["nats.url"] != "nats://127.0.0.1:4222" {
		t.Errorf("settings line = %v", line)
	}
	if strings.Contains(out.String(), "hunter2") {
		t.Errorf("secret logged: %s", out.String())
	}
}

func TestInitErrors(t *testing.T) {
	cfg := svcConfig{NATS: DefaultNATS(), Log: DefaultLog()}
	var out bytes.Buffer
	if _, _, err := Init("x", &cfg, &cfg.Log, []string{"-h"}, nil, &out); !config.IsHelp(err) {
		t.Errorf("-h: %v", err)
	}
	if _, _, err := Init("x", &cfg, &cfg.Log, nil, []string{"SB_LOG_LEVEL=loud"}, &out); err == nil {
		t.Error("bad log level accepted")
	}
	if _, _, err := Init("x", &cfg, &cfg.Log, nil, []string{"SB_NOPE=1"}, &out); err == nil {
		t.Error("unknown setting accepted")
	}
}

func TestMainExitCodes(t *testing.T) {
	type cfgT struct {
		Log LogConfig `koanf:"log"`
		N   int       `koanf:"n"`
	}
	cases := []struct {
		name   string
		args   []string
		runErr error
		want   int
	}{
		{"help", []string{"-h"}, nil, 0},
		{"bad setting", []string{"-n=x"}, nil, 2},
		{"stray argument", []string{"extra"}, nil, 2},
		{"run fails", nil, errors.New("boom"), 1},
		{"clean stop", nil, nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := cfgT{Log: DefaultLog()}
			var out bytes.Buffer
			ran := false
			code := Main("svc", &out, func() (*slog.Logger, error) {
				return Load("svc", &cfg, &cfg.Log, tc.args, nil, &out)
			}, func(ctx context.Context, _ *slog.Logger) error {
				ran = ctx != nil
				return tc.runErr
			})
			if code != tc.want {
				t.Fatalf("exit code %d, want %d (output %q)", code, tc.want, out.String())
			}
			if ran != (tc.want == 1 || tc.name == "clean stop") {
				t.Fatalf("run called: %v", ran)
			}
		})
	}
}

// Credentials are separate settings, masked when printed; a password in
// the URL is masked too, also in connect errors; each service gets its
// own inbox prefix.
func TestNATSCredentials(t *testing.T) {
	srv := natstest.RunWith(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "gw", Password: "s3cret-pw"}}
	})
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := NATSConfig{URL: srv.URL(), User: "gw", Password: "s3cret-pw"}
	nc, err := cfg.Connect(context.Background(), log, "switchboard-gateway")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if inbox := nc.NewInbox(); !strings.HasPrefix(inbox, "_INBOX_gateway.") {
		t.Fatalf("inbox %q", inbox)
	}
	bad := NATSConfig{URL: strings.Replace(srv.URL(), "nats://", "nats://gw:wrong-pw@", 1)}
	if _, err := bad.Connect(context.Background(), log, "x"); err == nil || strings.Contains(err.Error(), "wrong-pw") {
		t.Fatalf("connect error %v", err)
	}
	printed := fmt.Sprint(config.Printable(struct {
		NATS NATSConfig `koanf:"nats"`
	}{NATSConfig{URL: "nats://gw:in-url-pw@h:4222", Password: "s3cret-pw"}}))
	for _, secret := range []string{"s3cret-pw", "in-url-pw"} {
		if strings.Contains(printed, secret) {
			t.Fatalf("printed settings show %q: %s", secret, printed)
		}
	}
	if _, err := (NATSConfig{URL: srv.URL(), TLSCertFile: "c.pem"}).Connect(context.Background(), log, "x"); err == nil {
		t.Fatal("a certificate without its key accepted")
	}
}

// An nkey seed file authenticates; a server with TLS is reached with the
// CA file and verified against it.
func TestNATSNKeyAndTLS(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := natstest.RunWith(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	nc, err := NATSConfig{URL: srv.URL(), NKeySeedFile: seedFile}.Connect(context.Background(), log, "x")
	if err != nil {
		t.Fatalf("nkey: %v", err)
	}
	nc.Close()
	if _, err := (NATSConfig{URL: srv.URL()}).Connect(context.Background(), log, "x"); err == nil {
		t.Fatal("connected without the nkey")
	}

	caFile, tlsCfg := testTLS(t)
	tsrv := natstest.RunWith(t, func(o *server.Options) { o.TLSConfig = tlsCfg; o.TLS = true })
	nc, err = NATSConfig{URL: strings.Replace(tsrv.URL(), "nats://", "tls://", 1), TLSCAFile: caFile}.Connect(context.Background(), log, "x")
	if err != nil {
		t.Fatalf("tls: %v", err)
	}
	nc.Close()
	if _, err := (NATSConfig{URL: strings.Replace(tsrv.URL(), "nats://", "tls://", 1)}).Connect(context.Background(), log, "x"); err == nil {
		t.Fatal("a server certificate of an unknown CA was accepted")
	}
}

// testTLS makes a CA (written to a file) and a server certificate for
// 127.0.0.1 signed by it.
func testTLS(t *testing.T) (string, *tls.Config) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	caCert, _ := x509.ParseCertificate(caDER)
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: srvKey}}, MinVersion: tls.VersionTLS12}
}
