package authsvc

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/api"
	"github.com/switchboard-rt/switchboard/pkg/natstest"
	"github.com/switchboard-rt/switchboard/pkg/natsx"
	"github.com/switchboard-rt/switchboard/pkg/subject"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// logBuffer collects log output written from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func debugLog(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// jwtConfig is a production-valid JWT configuration.
func jwtConfig() Config {
	return Config{Verifier: VerifierJWT, JWT: JWTConfig{Secret: testSecret}}
}

// startService runs the service on a fresh embedded NATS server and returns a
// client connection.
func startService(t *testing.T, log *slog.Logger, cfg Config, opts ...Option) *nats.Conn {
	t.Helper()
	s := natstest.Run(t)
	svc, err := Start(context.Background(), log, s.Conn(t), cfg, opts...)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := svc.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return s.Conn(t)
}

// verify asks the service to verify token.
func verify(t *testing.T, nc *nats.Conn, token string) (api.VerifyReply, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return natsx.Request[api.VerifyReply](ctx, nc, subject.AuthVerify, api.VerifyRequest{Token: token})
}

// wantCode asserts that err is a service error with code (and, for 401, the
// exact message "Unauthorized").
func wantCode(t *testing.T, err error, code int) {
	t.Helper()
	var e *natsx.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want service error %d", err, code)
	}
	if e.Code != code {
		t.Fatalf("code = %d (%s), want %d", e.Code, e.Message, code)
	}
	if code == api.CodeUnauthorized && e.Message != "Unauthorized" {
		t.Fatalf("message = %q, want Unauthorized", e.Message)
	}
}
