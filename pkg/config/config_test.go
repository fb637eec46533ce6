package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

type httpSection struct {
	Addr    string        `koanf:"addr"`
	Timeout time.Duration `koanf:"timeout"`
	Origins []string      `koanf:"allowed_origins"`
}

type jwtSection struct {
	Secret   string `koanf:"secret"`
	Audience string `koanf:"audience"`
}

type testConfig struct {
	NATS  natsSection `koanf:"nats"`
	HTTP  httpSection `koanf:"http"`
	JWT   jwtSection  `koanf:"jwt"`
	Limit int         `koanf:"max_connections"`
	Dev   bool        `koanf:"dev_mode"`
}

type natsSection struct {
	URL       string `koanf:"url"`
	CredsFile string `koanf:"creds_file"`
}

func defaults() testConfig {
	return testConfig{
		NATS:  natsSection{URL: "nats://127.0.0.1:4222"},
		HTTP:  httpSection{Addr: ":8080", Timeout: 3 * time.Second, Origins: []string{"*"}},
		JWT:   jwtSection{Audience: "app"},
		Limit: 3,
	}
}

func load(t *testing.T, args, env []string) (testConfig, []string, error) {
	t.Helper()
	cfg := defaults()
	var usage bytes.Buffer
	rest, err := Load(&cfg, "svc", args, env, &usage)
	return cfg, rest, err
}

func writeYAML(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDefaults(t *testing.T) {
	cfg, rest, err := load(t, nil, []string{"HOME=/x", "PATH=/bin", "SBX_OTHER=1"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, defaults()) {
		t.Errorf("cfg = %+v, want defaults %+v", cfg, defaults())
	}
	if len(rest) != 0 {
		t.Errorf("rest = %q", rest)
	}
}

func TestLoadPrecedence(t *testing.T) {
	file := writeYAML(t, `
nats:
  url: nats://file:4222
http:
  addr: ":9000"
  timeout: 5s
  allowed_origins:
    - https://a.example
    - http://localhost:*
max_connections: 5
dev_mode: true
jwt:
  secret: from-file
`)
	tests := []struct {
		name string
		args []string
		env  []string
		want func(*testConfig)
	}{
		{"file", []string{"-config", file}, nil, func(c *testConfig) {
			c.NATS.URL = "nats://file:4222"
			c.HTTP.Addr = ":9000"
			c.HTTP.Timeout = 5 * time.Second
			c.HTTP.Origins = []string{"https://a.example", "http://localhost:*"}
			c.Limit = 5
			c.Dev = true
			c.JWT.Secret = "from-file"
		}},
		{"SB_CONFIG picks the file", nil, []string{"SB_CONFIG=" + file}, func(c *testConfig) {
			c.NATS.URL = "nats://file:4222"
			c.HTTP.Addr = ":9000"
			c.HTTP.Timeout = 5 * time.Second
			c.HTTP.Origins = []string{"https://a.example", "http://localhost:*"}
			c.Limit = 5
			c.Dev = true
			c.JWT.Secret = "from-file"
		}},
		{"env over file", []string{"-config", file}, []string{
			"SB_NATS_URL=nats://env:4222", "SB_HTTP_TIMEOUT=2s", "SB_MAX_CONNECTIONS=7", "SB_DEV_MODE=false",
			"SB_HTTP_ALLOWED_ORIGINS=a, b", "SB_NATS_CREDS_FILE=/c.creds",
		}, func(c *testConfig) {
			c.NATS.URL = "nats://env:4222"
			c.NATS.CredsFile = "/c.creds"
			c.HTTP.Addr = ":9000"
			c.HTTP.Timeout = 2 * time.Second
			c.HTTP.Origins = []string{"a", "b"}
			c.Limit = 7
			c.Dev = false
			c.JWT.Secret = "from-file"
		}},
		{"flag over env", []string{"-config", file, "-nats.url=nats://flag:4222", "-http.timeout", "1m", "-max_connections=9", "-http.allowed_origins=x,y,z", "-dev_mode=true", "rest1", "rest2"},
			[]string{"SB_NATS_URL=nats://env:4222", "SB_HTTP_TIMEOUT=2s", "SB_MAX_CONNECTIONS=7", "SB_DEV_MODE=false"},
			func(c *testConfig) {
				c.NATS.URL = "nats://flag:4222"
				c.HTTP.Addr = ":9000"
				c.HTTP.Timeout = time.Minute
				c.HTTP.Origins = []string{"x", "y", "z"}
				c.Limit = 9
				c.Dev = true
				c.JWT.Secret = "from-file"
			}},
		{"env without file", nil, []string{"SB_HTTP_ALLOWED_ORIGINS=", "SB_DEV_MODE=1", "SB_JWT_SECRET=s3"}, func(c *testConfig) {
			c.HTTP.Origins = []string{}
			c.Dev = true
			c.JWT.Secret = "s3"
		}},
		{"flag -config wins over SB_CONFIG", []string{"-config", file}, []string{"SB_CONFIG=/does/not/exist.yaml"}, func(c *testConfig) {
			c.NATS.URL = "nats://file:4222"
			c.HTTP.Addr = ":9000"
			c.HTTP.Timeout = 5 * time.Second
			c.HTTP.Origins = []string{"https://a.example", "http://localhost:*"}
			c.Limit = 5
			c.Dev = true
			c.JWT.Secret = "from-file"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, rest, err := load(t, tt.args, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			want := defaults()
			tt.want(&want)
			if !reflect.DeepEqual(cfg, want) {
				t.Errorf("cfg =\n%+v\nwant\n%+v", cfg, want)
			}
			if tt.name == "flag over env" && !reflect.DeepEqual(rest, []string{"rest1", "rest2"}) {
				t.Errorf("rest = %q", rest)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	unknownKey := writeYAML(t, "nats:\n  url: x\n  nope: 1\n")
	unknownSection := writeYAML(t, "nope:\n  a: 1\n")
	scalarSection := writeYAML(t, "nats: x\n")
	badYAML := writeYAML(t, "nats: [\n")
	tests := []struct {
		name string
		args []string
		env  []string
		want string // substring of the error
	}{
		{"unknown env", nil, []string{"SB_NOPE=1"}, "SB_NOPE"},
		{"unknown env similar", nil, []string{"SB_NATS=1"}, "SB_NATS"},
		{"unknown yaml key", []string{"-config", unknownKey}, nil, "nats.nope"},
		{"unknown yaml section", []string{"-config", unknownSection}, nil, "nope.a"},
		{"scalar for section", []string{"-config", scalarSection}, nil, "nats"},
		{"bad yaml", []string{"-config", badYAML}, nil, badYAML},
		{"missing file", []string{"-config", filepath.Join(t.TempDir(), "none.yaml")}, nil, "none.yaml"},
		{"missing SB_CONFIG file", nil, []string{"SB_CONFIG=" + filepath.Join(t.TempDir(), "gone.yaml")}, "gone.yaml"},
		{"unknown flag", []string{"-nope=1"}, nil, "nope"},
		{"bad duration", nil, []string{"SB_HTTP_TIMEOUT=soon"}, "decode"},
		{"bad int", []string{"-max_connections=many"}, nil, "decode"},
		{"bad bool", nil, []string{"SB_DEV_MODE=maybe"}, "decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := load(t, tt.args, tt.env)
			if err == nil {
				t.Fatal("Load succeeded, want error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if IsHelp(err) {
				t.Errorf("IsHelp(%v) = true", err)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		cfg := defaults()
		var usage bytes.Buffer
		_, err := Load(&cfg, "svc", []string{arg}, nil, &usage)
		if !IsHelp(err) {
			t.Fatalf("Load(%s) error = %v, want help", arg, err)
		}
		out := usage.String()
		for _, want := range []string{"-nats.url", "SB_NATS_URL", "-http.timeout", "3s", "-config"} {
			if !strings.Contains(out, want) {
				t.Errorf("usage does not mention %q:\n%s", want, out)
			}
		}
	}
	if IsHelp(fmt.Errorf("other")) || IsHelp(nil) {
		t.Error("IsHelp of other errors")
	}
	if !IsHelp(fmt.Errorf("wrapped: %w", ErrHelp)) {
		t.Error("IsHelp of wrapped ErrHelp = false")
	}
}

func TestHelpMasksSecretDefaults(t *testing.T) {
	cfg := defaults()
	cfg.JWT.Secret = "default-secret-value"
	var usage bytes.Buffer
	if _, err := Load(&cfg, "svc", []string{"-h"}, nil, &usage); !IsHelp(err) {
		t.Fatal(err)
	}
	if strings.Contains(usage.String(), "default-secret-value") {
		t.Errorf("usage shows a secret:\n%s", usage.String())
	}
}

func TestPrintable(t *testing.T) {
	cfg := defaults()
	cfg.JWT.Secret = "hunter2"
	kv := Printable(&cfg)
	if len(kv)%2 != 0 {
		t.Fatalf("odd key/value list %v", kv)
	}
	got := map[string]any{}
	var keys []string
	for i := 0; i < len(kv); i += 2 {
		k := kv[i].(string)
		keys = append(keys, k)
		got[k] = kv[i+1]
	}
	if !sortedStrings(keys) {
		t.Errorf("keys not sorted: %q", keys)
	}
	want := map[string]any{
		"jwt.secret":           "***",
		"jwt.audience":         "app",
		"http.timeout":         "3s",
		"nats.url":             "nats://127.0.0.1:4222",
		"nats.creds_file":      "",
		"max_connections":      3,
		"dev_mode":             false,
		"http.addr":            ":8080",
		"http.allowed_origins": []string{"*"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Printable =\n%#v\nwant\n%#v", got, want)
	}
	for _, v := range kv {
		if s, ok := v.(string); ok && strings.Contains(s, "hunter2") {
			t.Errorf("Printable leaks the secret: %v", kv)
		}
	}

	cfg.JWT.Secret = ""
	kv = Printable(&cfg)
	for i := 0; i < len(kv); i += 2 {
		if kv[i] == "jwt.secret" && kv[i+1] != "" {
			t.Errorf("empty secret printed as %v, want empty (shows it is unset)", kv[i+1])
		}
	}
}

func TestIsSecret(t *testing.T) {
	for key, want := range map[string]bool{
		"jwt.secret":           true,
		"db.password":          true,
		"auth.token":           true,
		"firebase.credentials": true,
		"api_key":              true,
		"nats.url":             false,
		"secret.url":           false, // only the last part counts
		"http.addr":            false,
		"timeout":              false,
	} {
		if got := IsSecret(key); got != want {
			t.Errorf("IsSecret(%q) = %v, want %v", key, got, want)
		}
	}
}

func sortedStrings(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i-1] > s[i] {
			return false
		}
	}
	return true
}

func TestLoadNilFields(t *testing.T) {
	// A nil pointer or map default must not crash Load; the key stays
	// settable.
	type withNil struct {
		Limit *int            `koanf:"limit"`
		Tags  map[string]bool `koanf:"tags"`
	}
	var cfg withNil
	var usage bytes.Buffer
	if _, err := Load(&cfg, "svc", nil, []string{"SB_LIMIT=4"}, &usage); err != nil {
		t.Fatal(err)
	}
	if cfg.Limit == nil || *cfg.Limit != 4 {
		t.Errorf("limit = %v, want 4", cfg.Limit)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                   "nats://127.0.0.1:4222",
		"nats://gw:s3cret@nats:4222":              "nats://gw:%2A%2A%2A@nats:4222",
		"nats://tok3n@nats:4222":                  "nats://%2A%2A%2A@nats:4222",
		"nats://a:p1@n1:4222,nats://a:p2@n2:4222": "nats://a:%2A%2A%2A@n1:4222,nats://a:%2A%2A%2A@n2:4222",
		"plain text":                              "plain text",
		"user@example.com":                        "user@example.com",
	} {
		got := RedactURL(in)
		if got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"s3cret", "tok3n", "p1@", "p2@"} {
			if strings.Contains(got, secret) {
				t.Errorf("RedactURL(%q) = %q shows %q", in, got, secret)
			}
		}
	}
}
