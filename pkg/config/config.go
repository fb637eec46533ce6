// Package config loads a service's typed configuration with koanf.
//
// Sources, later ones winning: the defaults held by the struct passed in, a
// YAML file (flag -config or SB_CONFIG), SB_ environment variables, and
// command-line flags. Keys are snake_case and nest with "."; the environment
// variable of a key is SB_ followed by the key in upper case with "." turned
// into "_" (nats.url -> SB_NATS_URL), and every key is also a flag
// (-nats.url=...). Unknown keys are errors, so a typo never goes unnoticed.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"
)

// EnvPrefix starts every environment variable read by Load.
const EnvPrefix = "SB_"

// ErrHelp is returned when -h or -help was asked for (usage was printed).
var ErrHelp = flag.ErrHelp

// Load fills cfg, a pointer to a struct with `koanf` tags that already holds
// the defaults, from the file, environment and flags. args are the
// command-line arguments without the program name; environ is os.Environ().
// It returns the arguments left after the flags.
func Load(cfg any, name string, args, environ []string, usage io.Writer) ([]string, error) {
	k := koanf.New(".")
	if err := k.Load(structs.Provider(cfg, "koanf"), nil); err != nil {
		return nil, fmt.Errorf("load defaults: %w", err)
	}
	known := map[string]reflect.Kind{}
	envKey := map[string]string{}
	for key, v := range k.All() {
		known[key] = reflect.Invalid // a nil pointer or map: set from text
		if v != nil {
			known[key] = reflect.TypeOf(v).Kind()
		}
		envKey[envName(key)] = key
	}

	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(usage)
	cfgFile := fs.String("config", "", "YAML configuration file (also SB_CONFIG)")
	keys := sortedKeys(known)
	for _, key := range keys {
		fs.String(key, "", fmt.Sprintf("(%s) default %v", envName(key), printable(key, k.Get(key))))
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}

	envVals := map[string]any{}
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		if name == EnvPrefix+"CONFIG" {
			if *cfgFile == "" {
				*cfgFile = val
			}
			continue
		}
		key, ok := envKey[name]
		if !ok {
			return nil, fmt.Errorf("unknown setting %s", name)
		}
		envVals[key] = convert(known[key], val)
	}

	if *cfgFile != "" {
		fk := koanf.New(".")
		if err := fk.Load(file.Provider(*cfgFile), yaml.Parser()); err != nil {
			return nil, fmt.Errorf("read %s: %w", *cfgFile, err)
		}
		for _, key := range fk.Keys() {
			if _, ok := known[key]; !ok {
				return nil, fmt.Errorf("%s: unknown setting %q", *cfgFile, key)
			}
		}
		if err := k.Merge(fk); err != nil {
			return nil, fmt.Errorf("merge %s: %w", *cfgFile, err)
		}
	}
	if err := k.Load(confmap.Provider(envVals, "."), nil); err != nil {
		return nil, fmt.Errorf("load environment: %w", err)
	}
	flagVals := map[string]any{}
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "config" {
			flagVals[f.Name] = convert(known[f.Name], f.Value.String())
		}
	})
	if err := k.Load(confmap.Provider(flagVals, "."), nil); err != nil {
		return nil, fmt.Errorf("load flags: %w", err)
	}
	if err := k.UnmarshalWithConf("", cfg, koanf.UnmarshalConf{Tag: "koanf"}); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return fs.Args(), nil
}

func envName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func convert(kind reflect.Kind, val string) any {
	if kind == reflect.Slice {
		if strings.TrimSpace(val) == "" {
			return []string{}
		}
		parts := strings.Split(val, ",")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return parts
	}
	return val
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

var secretWords = []string{"secret", "password", "token", "credentials", "key"}

// IsSecret reports whether a key holds a secret (masked when printed).
func IsSecret(key string) bool {
	last := key[strings.LastIndexByte(key, '.')+1:]
	for _, w := range secretWords {
		if strings.Contains(last, w) {
			return true
		}
	}
	return false
}

func printable(key string, v any) any {
	switch x := v.(type) {
	case time.Duration:
		return x.String()
	case string:
		if x != "" && IsSecret(key) {
			return "***"
		}
		return RedactURL(x)
	}
	return v
}

// RedactURL masks the password of every URL in s (a comma-separated list
// of URLs, as NATS takes); anything else is returned unchanged.
func RedactURL(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			if err != nil && strings.Contains(p, "@") {
				parts[i] = "***"
			}
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "***")
		} else if strings.Contains(p, "://") {
			u.User = url.User("***") // a token in the user part
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// Printable returns the settings of cfg as flat key/value pairs with secrets
// masked, ready to log at start.
func Printable(cfg any) []any {
	k := koanf.New(".")
	if err := k.Load(structs.Provider(cfg, "koanf"), nil); err != nil {
		return []any{"error", err.Error()}
	}
	all := k.All()
	out := make([]any, 0, 2*len(all))
	for _, key := range sortedKeys(all) {
		out = append(out, key, printable(key, all[key]))
	}
	return out
}

// IsHelp reports whether err means the user asked for usage.
func IsHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }
