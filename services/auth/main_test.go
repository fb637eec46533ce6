package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/boot/boottest"
	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/ops/opstest"
	"github.com/switchboard-rt/switchboard/pkg/subject"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
)

const secret = "a-production-grade-secret-of-40-bytes...."

// When set (to "main" followed by arguments), the test binary runs main()
// instead of the tests, so exit codes can be checked.
const runMainEnv = "AUTH_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if v, ok := os.LookupEnv(runMainEnv); ok {
		args := strings.Fields(v)
		if len(args) == 0 || args[0] != "main" {
			os.Exit(3) // never run the tests recursively
		}
		os.Args = append([]string{"auth"}, args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestLoad(t *testing.T) {
	var out bytes.Buffer
	_, cfg, err := load(nil, []string{"SB_AUTH_VERIFIER=jwt", "SB_AUTH_JWT_SECRET=" + secret, "SB_NATS_URL=nats://example:4222", "HOME=/x"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Auth.Verifier != "jwt" || cfg.Auth.JWT.Secret != secret || cfg.NATS.URL != "nats://example:4222" {
		t.Fatalf("cfg = %+v", cfg)
	}
	if strings.Contains(out.String(), secret) {
		t.Fatalf("secret printed:\n%s", out.String())
	}

	_, cfg, err = load([]string{"-auth.firebase.project_id=p1"}, nil, io.Discard)
	if err != nil || cfg.Auth.Verifier != "firebase" || cfg.Auth.Firebase.ProjectID != "p1" {
		t.Fatalf("flags: cfg %+v err %v", cfg.Auth, err)
	}

	yaml := filepath.Join(t.TempDir(), "auth.yaml")
	if err := os.WriteFile(yaml, []byte("auth:\n  verifier: jwt\n  dev_secret: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name    string
		args    []string
		environ []string
	}{
		{"dev switch in env", nil, []string{"SB_AUTH_DEV_SECRET=true"}},
		{"dev switch in YAML", []string{"-config", yaml}, nil},
		{"dev switch as flag", []string{"-auth.dev_secret=true"}, nil},
		{"positional argument", []string{"serve"}, nil},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := load(tc.args, tc.environ, io.Discard); err == nil || config.IsHelp(err) {
				t.Fatalf("err = %v, want a configuration error", err)
			}
		})
	}

	out.Reset()
	if _, _, err := load([]string{"-h"}, nil, &out); !config.IsHelp(err) {
		t.Fatalf("-h: err = %v", err)
	}
	if !strings.Contains(out.String(), "auth.jwt.secret") || !strings.Contains(out.String(), "SB_AUTH_FIREBASE_PROJECT_ID") {
		t.Fatalf("usage lacks the auth settings:\n%s", out.String())
	}
}

func TestEmulatorGuard(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	if err := emulatorGuard(env(nil)); err != nil {
		t.Fatalf("unset: %v", err)
	}
	err := emulatorGuard(env(map[string]string{emulatorHostEnv: "127.0.0.1:9099"}))
	if err == nil || !strings.Contains(err.Error(), emulatorHostEnv) {
		t.Fatalf("set: err = %v", err)
	}
}

// The binary's exit codes: 0 for -h, 2 for configuration errors and for the
// emulator variable.
func TestMainExitCodes(t *testing.T) {
	cases := []struct {
		name string
		args string
		env  []string
		code int
		want string
	}{
		{"help", "-h", nil, 0, "auth.verifier"},
		{"unknown flag", "-nope", nil, 2, "nope"},
		{"unknown env", "", []string{"SB_AUTH_NOPE=1"}, 2, "SB_AUTH_NOPE"},
		{"emulator host set", "-auth.verifier=jwt -auth.jwt.secret=" + secret, []string{emulatorHostEnv + "=127.0.0.1:9099"}, 2, emulatorHostEnv},
		{"bad config, before NATS", "-auth.verifier=oidc -auth.oidc.issuer=https://idp.example.com -nats.url=nats://127.0.0.1:1", nil, 2, "oidc.audience is required"},
		{"default config", "-nats.url=nats://127.0.0.1:1", nil, 2, "firebase.project_id is required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0])
			cmd.Env = append([]string{runMainEnv + "=main " + tc.args}, tc.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr.String())
			}
		})
	}
}

func testConfig(url string) Config {
	cfg := DefaultConfig()
	cfg.NATS.URL = url
	cfg.Auth.Verifier = authsvc.VerifierJWT
	cfg.Auth.JWT.Secret = secret
	cfg.Ops.Listen = ""
	return cfg
}

func TestRun(t *testing.T) {
	s := natstest.Run(t)
	cfg := testConfig(s.URL())
	cfg.Ops.Listen = fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))
	svc := boottest.Start(t, func(ctx context.Context) error {
		return run(ctx, slog.New(slog.DiscardHandler), cfg)
	})

	nc := s.Conn(t)
	tok, err := authsvc.MintToken(secret, "", "", "heidi", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		got, err := natsx.Request[api.VerifyReply](rctx, nc, subject.AuthVerify, api.VerifyRequest{Token: tok})
		rcancel()
		if err == nil {
			if got.UserID != "heidi" {
				t.Fatalf("uid = %q", got.UserID)
			}
			break
		}
		if !errors.Is(err, natsx.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("verify: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The operations listener: ready, and the verification counted.
	if code := runHealth(t, cfg.Ops.Listen); code != 0 {
		t.Fatalf("health exit %d, want 0", code)
	}
	metrics := opstest.Scrape(t, cfg.Ops.Listen)
	if opstest.Value(metrics, `switchboard_auth_verifications_total{result="ok"}`) != 1 {
		t.Fatalf("metrics lack the verification:\n%s", metrics)
	}

	svc.Stop()
	rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
	defer rcancel()
	if _, err := natsx.Request[api.VerifyReply](rctx, nc, subject.AuthVerify, api.VerifyRequest{Token: tok}); !errors.Is(err, natsx.ErrUnavailable) {
		t.Fatalf("after stop: err = %v, want unavailable", err)
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	s := natstest.Run(t)
	devSecret := testConfig(s.URL())
	devSecret.Auth.JWT.Secret = authsvc.DevSecret
	noProject := testConfig(s.URL())
	noProject.Auth = authsvc.DefaultConfig()
	cases := map[string]struct {
		cfg  Config
		want string
	}{
		"dev secret":  {devSecret, "development secret"},
		"no project":  {noProject, "firebase.project_id is required"},
		"nats absent": {testConfig("nats://127.0.0.1:1"), "connect nats"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			err := run(ctx, slog.New(slog.DiscardHandler), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// runHealth runs the binary's health subcommand against listen.
func runHealth(t *testing.T, listen string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = []string{runMainEnv + "=main health -ops.listen=" + listen}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Logf("health: %s", stderr.String())
		return ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return 0
}
