package validate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// root is the repository root, seen from this package.
const root = "../.."

// goServices maps each compose service that runs a Switchboard image to
// its binary and NATS user.
var goServices = map[string]struct{ bin, user string }{
	"provision-presence": {"presence", "admin"},
	"provision-timer":    {"timer", "admin"},
	"auth":               {"auth", "auth"},
	"presence":           {"presence", "presence"},
	"timer-1":            {"timer", "timer"},
	"timer-2":            {"timer", "timer"},
	"gateway-1":          {"gateway", "gateway"},
	"gateway-2":          {"gateway", "gateway"},
}

var natsNodes = []string{"nats-1", "nats-2", "nats-3"}

func loadCompose(t *testing.T, envFiles ...string) (*types.Project, error) {
	t.Helper()
	opts := []cli.ProjectOptionsFn{cli.WithWorkingDirectory(root), cli.WithName("switchboard")}
	if len(envFiles) > 0 {
		opts = append(opts, cli.WithEnvFiles(envFiles...), cli.WithDotEnv)
	} else {
		opts = append(opts, cli.WithDiscardEnvFile)
	}
	o, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return o.LoadProject(ctx)
}

func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, filepath.Join(root, ".env.example"))
	if err != nil {
		t.Fatalf("load compose with .env.example: %v", err)
	}
	return p
}

// The topology: three NATS nodes, the provisioners, auth, presence, two
// timers, two gateways and the load balancer, and nothing else.
func TestComposeTopology(t *testing.T) {
	p := mustLoadCompose(t)
	want := append(slices.Clone(natsNodes), "lb")
	for s := range goServices {
		want = append(want, s)
	}
	slices.Sort(want)
	got := p.ServiceNames()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
}

// Only the load balancer is published, on loopback unless SB_PUBLISH says
// otherwise.
func TestComposeOnlyLBPublished(t *testing.T) {
	p := mustLoadCompose(t)
	for name, s := range p.Services {
		if name == "lb" {
			if len(s.Ports) != 1 || s.Ports[0].Target != 8080 || s.Ports[0].Published != "3000" || s.Ports[0].HostIP != "127.0.0.1" {
				t.Errorf("lb ports %+v, want 127.0.0.1:3000->8080", s.Ports)
			}
			continue
		}
		if len(s.Ports) > 0 {
			t.Errorf("%s publishes %+v", name, s.Ports)
		}
	}
}

// Every long-running service has a healthcheck (the Go services their
// `health` subcommand); every dependency waits for health, or for a
// provisioner's success.
func TestComposeHealthAndDependencies(t *testing.T) {
	p := mustLoadCompose(t)
	for name, s := range p.Services {
		provisioner := strings.HasPrefix(name, "provision-")
		hc := s.HealthCheck
		switch {
		case provisioner:
			if s.Restart != "no" {
				t.Errorf("%s: restart %q, want no (a one-shot)", name, s.Restart)
			}
		case hc == nil || hc.Disable || len(hc.Test) == 0:
			t.Errorf("%s has no healthcheck", name)
		case goServices[name].bin != "" && !slices.Equal(hc.Test, types.HealthCheckTest{"CMD", "/service", "health"}):
			t.Errorf("%s healthcheck %v", name, hc.Test)
		}
		for dep, d := range s.DependsOn {
			target, ok := p.Services[dep]
			if !ok {
				t.Errorf("%s depends on unknown %s", name, dep)
				continue
			}
			want := types.ServiceConditionHealthy
			if strings.HasPrefix(target.Name, "provision-") {
				want = types.ServiceConditionCompletedSuccessfully
			}
			if d.Condition != want {
				t.Errorf("%s -> %s: condition %q, want %q", name, dep, d.Condition, want)
			}
		}
		if name != "lb" && !slices.Contains(natsNodes, name) {
			for _, n := range natsNodes {
				if _, ok := s.DependsOn[n]; !ok {
					t.Errorf("%s does not wait for %s", name, n)
				}
			}
		}
	}
	for _, gw := range []string{"gateway-1", "gateway-2"} {
		if _, ok := p.Services["lb"].DependsOn[gw]; !ok {
			t.Errorf("lb does not wait for %s", gw)
		}
	}
}

// Services get longer than their drain to stop: the gateways' drain
// (drain_timeout, 10 s by default) moves clients and releases slots.
func TestComposeStopGrace(t *testing.T) {
	p := mustLoadCompose(t)
	for name, s := range p.Services {
		if strings.HasPrefix(name, "provision-") {
			continue
		}
		min := 15 * time.Second
		if strings.HasPrefix(name, "gateway") {
			min = 20 * time.Second
		}
		if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < min {
			t.Errorf("%s stop_grace_period %v, want at least %v", name, s.StopGracePeriod, min)
		}
	}
}

// The NATS nodes run the shipped cluster configuration, with their own
// store, names and the routes of all three.
func TestComposeNATSCluster(t *testing.T) {
	p := mustLoadCompose(t)
	users := natsUsers(t)
	for _, n := range natsNodes {
		s := p.Services[n]
		if !strings.HasPrefix(s.Image, "nats:2.") {
			t.Errorf("%s image %q: want a pinned nats:2.x", n, s.Image)
		}
		if !slices.Equal([]string(s.Command), []string{"-c", "/etc/nats/cluster.conf"}) {
			t.Errorf("%s command %v", n, s.Command)
		}
		var conf, data bool
		for _, v := range s.Volumes {
			switch {
			case v.Target == "/etc/nats" && v.ReadOnly && filepath.Base(v.Source) == "nats":
				conf = true
				for _, f := range []string{"cluster.conf", "nats-server.conf"} {
					if _, err := os.Stat(filepath.Join(v.Source, f)); err != nil {
						t.Errorf("%s mounts %s without %s: %v", n, v.Source, f, err)
					}
				}
			case v.Target == "/data" && v.Type == types.VolumeTypeVolume:
				data = true
			}
		}
		if !conf || !data {
			t.Errorf("%s volumes %+v: want deploy/nats read-only and a data volume", n, s.Volumes)
		}
		env := s.Environment
		if v := env["NATS_SERVER_NAME"]; v == nil || *v != n {
			t.Errorf("%s NATS_SERVER_NAME %v", n, v)
		}
		for i, peer := range natsNodes {
			key := "NATS_ROUTE_" + string(rune('1'+i))
			if v := env[key]; v == nil || !strings.Contains(*v, "@"+peer+":6222") {
				t.Errorf("%s %s = %v", n, key, v)
			}
		}
		for u := range users {
			if u == "route" {
				continue
			}
			if v := env[strings.ToUpper(u)+"_PASSWORD"]; v == nil || *v == "" {
				t.Errorf("%s lacks the password of NATS user %s", n, u)
			}
		}
	}
}

// Every Switchboard service connects to all three nodes as its own NATS
// user, and its settings are ones the binary knows: `<binary> health` with
// the service's environment and command fails only because nothing answers
// (exit 1), never on a configuration error (exit 2).
func TestComposeServiceSettings(t *testing.T) {
	p := mustLoadCompose(t)
	users := natsUsers(t)
	for name, svc := range goServices {
		t.Run(name, func(t *testing.T) {
			s := p.Services[name]
			if s.Build == nil || s.Build.Dockerfile != "deploy/Dockerfile" || s.Build.Args["SERVICE"] == nil || *s.Build.Args["SERVICE"] != svc.bin {
				t.Fatalf("build %+v", s.Build)
			}
			env := map[string]string{}
			for k, v := range s.Environment {
				if v != nil {
					env[k] = *v
				}
			}
			if urls := strings.Split(env["SB_NATS_URL"], ","); len(urls) != 3 {
				t.Errorf("SB_NATS_URL %q: want the three nodes", env["SB_NATS_URL"])
			}
			if env["SB_NATS_USER"] != svc.user || !users[svc.user] || env["SB_NATS_PASSWORD"] == "" {
				t.Errorf("NATS user %q (password set: %v), want %q", env["SB_NATS_USER"], env["SB_NATS_PASSWORD"] != "", svc.user)
			}
			bin := filepath.Join(root, "bin", svc.bin)
			if _, err := os.Stat(bin); err != nil {
				t.Fatalf("%s: run make build first", bin)
			}
			var envList []string
			for k, v := range env {
				envList = append(envList, k+"="+v)
			}
			checkSettings(t, bin, envList, s.Command)
		})
	}
}

// Without the secrets the file refuses to load, naming what is missing.
func TestComposeNeedsSecrets(t *testing.T) {
	_, err := loadCompose(t)
	if err == nil || !strings.Contains(err.Error(), "PASSWORD") {
		t.Fatalf("load without .env: %v, want an error naming a password", err)
	}
}

// Images build with module downloads in their own layer: the Dockerfile
// copies the go.mod of every module, and .dockerignore keeps the build
// context small and secret-free.
func TestDockerfileAndIgnore(t *testing.T) {
	df, err := os.ReadFile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	work, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s+\./((?:pkg|services/\S+))\s*$`).FindAllStringSubmatch(string(work), -1) {
		if !strings.Contains(string(df), "COPY "+m[1]+"/go.mod "+m[1]+"/go.sum "+m[1]+"/") {
			t.Errorf("Dockerfile does not copy %s/go.mod before the download", m[1])
		}
	}
	download := strings.Index(string(df), "go mod download")
	source := strings.Index(string(df), "COPY pkg pkg")
	if download < 0 || source < 0 || download > source {
		t.Error("Dockerfile: go mod download must come before the source is copied")
	}
	ignore, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", "bin", ".env", "e2e"} {
		if !slices.Contains(strings.Fields(string(ignore)), want) {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
}

// natsUsers lists the users of the shipped NATS configuration.
func natsUsers(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "deploy", "nats", "nats-server.conf"))
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*(?:\{\s*)?user:\s*(\w+)`).FindAllStringSubmatch(string(b), -1) {
		users[m[1]] = true
	}
	if len(users) < 6 {
		t.Fatalf("found users %v in nats-server.conf", users)
	}
	return users
}

// checkSettings runs `<bin> health args...` with env (the settings a
// deployment gives a container): it must fail only because nothing answers
// (exit 1), never on a configuration error (exit 2, an unknown or invalid
// setting).
func checkSettings(t *testing.T, bin string, env, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"health"}, args...)...)
	// Nothing listens in the test: the probe goes to a closed port.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.Env = append(cmd.Env, "SB_OPS_LISTEN=127.0.0.1:1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("%s health: %v, want exit 1 (not answering); stderr: %s", filepath.Base(bin), err, stderr.String())
	}
}
