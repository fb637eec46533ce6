package main

// The shipped NATS configuration (deploy/nats/nats-server.conf) on a real
// nats-server: each user is refused what it must not do. (That every
// service can do its job under it is shown end to end by the e2e suite.)

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/natstest"
)

// buildNATSServer builds nats-server (the version this module requires).
func buildNATSServer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	build := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	build.Dir = "../../pkg"
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build nats-server: %v\n%s", err, out)
	}
	return bin
}

// shippedConf copies the shipped configuration files into dir, with the
// store in dir/js.
func shippedConf(t *testing.T, dir string) {
	t.Helper()
	for _, f := range []string{"nats-server.conf", "cluster.conf"} {
		conf, err := os.ReadFile(filepath.Join("../../deploy/nats", f))
		if err != nil {
			t.Fatal(err)
		}
		conf = regexp.MustCompile(`store_dir:.*`).ReplaceAll(conf, fmt.Appendf(nil, "store_dir: %q", filepath.Join(dir, "js")))
		if err := os.WriteFile(filepath.Join(dir, f), conf, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// userPasswords makes a password for each user of the configuration and
// the environment that gives them to nats-server.
func userPasswords() (map[string]string, []string) {
	passwords := map[string]string{}
	env := os.Environ()
	for _, u := range []string{"admin", "gateway", "auth", "presence", "timer", "app"} {
		passwords[u] = u + "-pw-" + fmt.Sprint(time.Now().UnixNano())
		env = append(env, strings.ToUpper(u)+"_PASSWORD="+passwords[u])
	}
	return passwords, env
}

// runNATS starts bin with args and env, killed at cleanup, and waits for
// its client port. It returns the process.
func runNATS(t *testing.T, bin string, port int, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, append(args, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-m", fmt.Sprint(natstest.FreePort(t)))...)
	cmd.Env = env
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server did not start:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// natsServer runs nats-server with the shipped configuration (its store in
// a temporary folder) and returns its URL and the users' passwords.
func natsServer(t *testing.T) (string, map[string]string) {
	t.Helper()
	bin := buildNATSServer(t)
	dir := t.TempDir()
	shippedConf(t, dir)
	passwords, env := userPasswords()
	port := natstest.FreePort(t)
	runNATS(t, bin, port, env, "-c", filepath.Join(dir, "nats-server.conf"))
	return fmt.Sprintf("nats://127.0.0.1:%d", port), passwords
}

// op is one operation a user tries.
type op struct {
	sub  bool // subscribe (else publish)
	subj string
}

func (o op) String() string {
	if o.sub {
		return "subscribe " + o.subj
	}
	return "publish " + o.subj
}

// refused reports whether the server refused o for the connection that
// reports async errors on errs.
func refused(t *testing.T, nc *nats.Conn, errs chan error, o op) bool {
	t.Helper()
	var err error
	if o.sub {
		_, err = nc.SubscribeSync(o.subj)
	} else {
		err = nc.Publish(o.subj, []byte("x"))
	}
	if err != nil {
		t.Fatalf("%s: %v", o, err)
	}
	_ = nc.Flush()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
}

func TestShippedPermissions(t *testing.T) {
	url, passwords := natsServer(t)
	forbidden := map[string][]op{
		// Tokens are read by the auth user only; replies by their requester.
		"app": {{true, "sb.auth.verify"}, {true, "_INBOX_gateway.>"}, {true, "_INBOX.>"}, {true, "sb.engine.>"}, {true, "sb.relay.>"},
			{false, "sb.presence.admit"}, {false, "sb.gw.heartbeat"}, {false, "sb.in.timerStart"},
			{false, "$JS.API.STREAM.DELETE.KV_sb_presence"}, {false, "$KV.sb_timers.t.0.x"}},
		"presence": {{true, "sb.auth.verify"}, {true, "_INBOX_gateway.>"}, {true, "sb.in.>"},
			{false, "$JS.API.STREAM.DELETE.KV_sb_timers"}, {false, "$JS.API.STREAM.CREATE.capture"}, {false, "$KV.sb_timers.t.0.x"},
			{false, "$JS.API.STREAM.UPDATE.KV_sb_presence"}, {false, "$JS.API.STREAM.CREATE.KV_sb_presence"},
			{false, "sb.out.user.x"}},
		"timer": {{true, "sb.auth.verify"}, {true, "sb.in.>"}, {true, "_INBOX_presence.>"},
			{false, "$JS.API.STREAM.DELETE.KV_sb_presence"}, {false, "$JS.API.STREAM.CREATE.capture"}, {false, "$KV.sb_presence.u.x"},
			{false, "$JS.API.STREAM.UPDATE.KV_sb_timers"}, {false, "$JS.API.STREAM.UPDATE.sb_timer_events"},
			{false, "sb.out.user.x"}, {false, "sb.presence.admit"}},
		"auth": {{true, "sb.in.>"}, {true, "sb.out.>"}, {true, "_INBOX_gateway.>"},
			{false, "sb.out.user.x"}, {false, "sb.in.x"}, {false, "$JS.API.INFO"}},
		"admin": {{true, "sb.auth.verify"}, {true, "sb.>"}, {false, "sb.out.user.x"}, {false, "$KV.sb_presence.u.x"}},
		"gateway": {{true, "sb.auth.verify"}, {true, "_INBOX_app.>"}, {true, "sb.presence.>"},
			{false, "$JS.API.INFO"}, {false, "sb.out.user.x"}, {false, "sb.event.connected"}, {false, "$KV.sb_presence.u.x"}},
	}
	for user, ops := range forbidden {
		t.Run(user, func(t *testing.T) {
			errs := make(chan error, 64)
			nc, err := nats.Connect(url, nats.UserInfo(user, passwords[user]),
				nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			for _, o := range ops {
				if !refused(t, nc, errs, o) {
					t.Errorf("%s may %s", user, o)
				}
			}
		})
	}
	// A wrong password is refused, and one user's password is no other's.
	if _, err := nats.Connect(url, nats.UserInfo("app", passwords["presence"])); err == nil {
		t.Fatal("app connected with presence's password")
	}
}
