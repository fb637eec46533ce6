package authsvc

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"
)

// Config selects and configures the token verifier.
type Config struct {
	// Verifier is "jwt" (HS256 shared secret), "firebase" (Firebase ID
	// tokens) or "oidc" (any OpenID Connect provider's keys, by JWKS).
	Verifier string         `koanf:"verifier"`
	JWT      JWTConfig      `koanf:"jwt"`
	Firebase FirebaseConfig `koanf:"firebase"`
	OIDC     OIDCConfig     `koanf:"oidc"`
	// Claims lists the token claims passed on to backend services with
	// every client event (header Sb-Claims), for example role or tenant.
	Claims []string `koanf:"claims"`
	// MaxClaimsBytes bounds the JSON of the selected claims of one token;
	// a token over it is refused.
	MaxClaimsBytes int `koanf:"max_claims_bytes"`
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
	// CheckRevoked also refuses tokens of disabled users and tokens issued
	// before the user's tokens were revoked. It looks the user up at
	// Firebase (credentials needed: the file above or the environment's
	// default ones), at most once per RevocationCacheTTL for a user whose
	// token passed.
	CheckRevoked       bool          `koanf:"check_revoked"`
	RevocationCacheTTL time.Duration `koanf:"revocation_cache_ttl"`
	// RevocationCacheSize bounds the users remembered.
	RevocationCacheSize int `koanf:"revocation_cache_size"`
}

// OIDCConfig configures the verifier of tokens signed with keys published
// as a JSON Web Key Set (Auth0, Keycloak, Supabase, Clerk, Cognito, ...).
type OIDCConfig struct {
	// Issuer is the required "iss". When JWKSURL is empty, the key set's
	// address is read from the issuer's discovery document
	// (<issuer>/.well-known/openid-configuration) at start.
	Issuer  string `koanf:"issuer"`
	JWKSURL string `koanf:"jwks_url"`
	// Audience must be among the token's "aud".
	Audience string `koanf:"audience"`
	// Algorithms are the signature algorithms accepted (RS256, RS384,
	// RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA).
	Algorithms []string `koanf:"algorithms"`
	// UIDClaim is the string claim that holds the user id.
	UIDClaim string `koanf:"uid_claim"`
	// Leeway is the clock skew allowed on exp, nbf and iat.
	Leeway time.Duration `koanf:"leeway"`
	// RefreshInterval is how often the key set is fetched again;
	// RefreshMinInterval how soon a token with an unknown key id may make
	// it be fetched again (key rotation).
	RefreshInterval    time.Duration `koanf:"refresh_interval"`
	RefreshMinInterval time.Duration `koanf:"refresh_min_interval"`
	// KeysMaxAge is how long fetched keys are trusted while the key set
	// cannot be fetched again; past it tokens are answered "unavailable".
	KeysMaxAge time.Duration `koanf:"keys_max_age"`
	// HTTPTimeout bounds one fetch of the key set or discovery document.
	HTTPTimeout time.Duration `koanf:"http_timeout"`
}

// Verifier names.
const (
	VerifierJWT      = "jwt"
	VerifierFirebase = "firebase"
	VerifierOIDC     = "oidc"
)

// DefaultConfig returns the defaults: the Firebase verifier, which needs a
// project id before the service can start.
func DefaultConfig() Config {
	return Config{
		Verifier:       VerifierFirebase,
		MaxClaimsBytes: 4096,
		Firebase: FirebaseConfig{
			RevocationCacheTTL:  10 * time.Second,
			RevocationCacheSize: 100_000,
		},
		OIDC: OIDCConfig{
			Algorithms:         []string{"RS256", "ES256", "EdDSA"},
			UIDClaim:           "sub",
			Leeway:             30 * time.Second,
			RefreshInterval:    15 * time.Minute,
			RefreshMinInterval: 30 * time.Second,
			KeysMaxAge:         2 * time.Hour,
			HTTPTimeout:        10 * time.Second,
		},
	}
}

// oidcAlgorithms are the algorithms the oidc verifier can accept: public
// keys only, so that no shared secret can be confused with a public key.
var oidcAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

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

// Validate checks c against the production rules, as Start does without
// options, so that a binary can refuse a bad configuration before it
// connects to anything.
func (c Config) Validate() error { return c.validate(options{}) }

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
		f := c.Firebase
		switch {
		case f.ProjectID == "":
			return errors.New("auth: firebase.project_id is required (or set verifier: jwt or oidc)")
		case f.CheckRevoked && (f.RevocationCacheTTL < 0 || f.RevocationCacheSize < 1):
			return errors.New("auth: firebase.revocation_cache_ttl must not be negative and revocation_cache_size must be positive")
		}
	case VerifierOIDC:
		if err := c.OIDC.validate(); err != nil {
			return fmt.Errorf("auth: oidc.%w", err)
		}
	default:
		return fmt.Errorf("auth: unknown verifier %q (want jwt, firebase or oidc)", c.Verifier)
	}
	if len(c.Claims) > 0 && c.MaxClaimsBytes < 2 {
		return errors.New("auth: max_claims_bytes must be at least 2")
	}
	for _, n := range c.Claims {
		if n == "" {
			return errors.New("auth: claims holds an empty name")
		}
	}
	return nil
}

func (c OIDCConfig) validate() error {
	if err := checkURL(c.Issuer); err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	if c.JWKSURL != "" {
		if err := checkURL(c.JWKSURL); err != nil {
			return fmt.Errorf("jwks_url: %w", err)
		}
	}
	switch {
	case c.Audience == "":
		return errors.New("audience is required")
	case len(c.Algorithms) == 0:
		return errors.New("algorithms is empty")
	case c.UIDClaim == "":
		return errors.New("uid_claim is empty")
	case c.Leeway < 0 || c.Leeway > 5*time.Minute:
		return errors.New("leeway must be between 0 and 5m")
	case c.RefreshInterval <= 0 || c.RefreshMinInterval <= 0 || c.HTTPTimeout <= 0:
		return errors.New("refresh_interval, refresh_min_interval and http_timeout must be positive")
	case c.KeysMaxAge <= c.RefreshInterval:
		return errors.New("keys_max_age must be longer than refresh_interval")
	}
	for _, a := range c.Algorithms {
		if !slices.Contains(oidcAlgorithms, a) {
			return fmt.Errorf("algorithms: %q is not one of %v", a, oidcAlgorithms)
		}
	}
	return nil
}

// checkURL accepts absolute https URLs, and http ones on loopback hosts.
func checkURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case s == "":
		return errors.New("is required")
	case err != nil:
		return fmt.Errorf("%q is not a URL", s)
	case u.Scheme == "https" && u.Host != "":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	}
	return fmt.Errorf("%q must be an https URL", s)
}
