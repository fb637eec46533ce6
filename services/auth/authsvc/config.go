package authsvc

import (
	"errors"
	"fmt"
)

// Config selects and configures the token verifier.
type Config struct {
	// Verifier is "jwt" (HS256 shared secret) or "firebase" (Firebase ID tokens).
	Verifier string         `koanf:"verifier"`
	JWT      JWTConfig      `koanf:"jwt"`
	Firebase FirebaseConfig `koanf:"firebase"`
}

// JWTConfig configures the HS256 verifier.
type JWTConfig struct {
	Secret   string `koanf:"secret"`   // shared HMAC secret, at least 32 bytes
	Issuer   string `koanf:"issuer"`   // required "iss" when not empty
	Audience string `koanf:"audience"` // required "aud" member when not empty
}

// FirebaseConfig configures the Firebase ID token verifier.
type FirebaseConfig struct {
	ProjectID string `koanf:"project_id"` // required
	// CredentialsFile is an optional service-account JSON file. Verifying ID
	// tokens needs no credentials (the public keys are fetched anonymously),
	// so when it is empty the SDK runs without any.
	CredentialsFile string `koanf:"credentials_file"`
}

// Verifier names.
const (
	VerifierJWT      = "jwt"
	VerifierFirebase = "firebase"
)

// DefaultConfig returns the defaults: the Firebase verifier, which needs a
// project id before the service can start.
func DefaultConfig() Config {
	return Config{Verifier: VerifierFirebase}
}

// DevSecret is the well-known secret of local development stacks. Start
// refuses it unless WithDevSecret is passed.
const DevSecret = "switchboard-dev-secret-do-not-use-in-production"

// MinSecretLen is the shortest JWT secret accepted in production.
const MinSecretLen = 32

type options struct {
	devSecret bool
}

// Option changes how Start builds the service. Options cannot be set from
// configuration files or environment variables.
type Option func(*options)

// WithDevSecret allows DevSecret and secrets shorter than MinSecretLen. Only
// local development stacks use it.
func WithDevSecret() Option { return func(o *options) { o.devSecret = true } }

// validate checks cfg against the production rules.
func (c Config) validate(o options) error {
	switch c.Verifier {
	case VerifierJWT:
		switch {
		case c.JWT.Secret == "":
			return errors.New("auth: jwt.secret is required")
		case o.devSecret:
		case c.JWT.Secret == DevSecret:
			return errors.New("auth: jwt.secret is the development secret; set a real secret")
		case len(c.JWT.Secret) < MinSecretLen:
			return fmt.Errorf("auth: jwt.secret is too short (%d bytes, need at least %d)", len(c.JWT.Secret), MinSecretLen)
		}
	case VerifierFirebase:
		if c.Firebase.ProjectID == "" {
			return errors.New("auth: firebase.project_id is required (or set verifier: jwt)")
		}
	default:
		return fmt.Errorf("auth: unknown verifier %q (want jwt or firebase)", c.Verifier)
	}
	return nil
}
