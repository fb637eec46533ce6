package authsvc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// jwtVerifier checks HS256 tokens signed with a shared secret.
type jwtVerifier struct {
	secret []byte
	parser *jwt.Parser
	claims claimPicker
}

func newJWTVerifier(c JWTConfig, claims claimPicker) *jwtVerifier {
	opts := []jwt.ParserOption{
		// Only HS256: refuses "none" and RS256/HS256 key confusion.
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
	}
	if c.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(c.Issuer))
	}
	if c.Audience != "" {
		opts = append(opts, jwt.WithAudience(c.Audience))
	}
	return &jwtVerifier{secret: []byte(c.Secret), parser: jwt.NewParser(opts...), claims: claims}
}

// Verify checks token's signature and claims.
func (v *jwtVerifier) Verify(_ context.Context, token string) (api.VerifyReply, error) {
	if err := precheck(token); err != nil {
		return api.VerifyReply{}, err
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		if _, ok := t.Method.(*jwt.SigningMethodHMAC); !ok {
			return nil, errors.New("unexpected signing method")
		}
		return v.secret, nil
	})
	if err != nil {
		return api.VerifyReply{}, reject(jwtReason(err))
	}
	return mapIdentity(claims, "sub", v.claims)
}

// mapIdentity builds the identity from a verified token's claims, the user
// id read from uidClaim.
func mapIdentity(claims jwt.MapClaims, uidClaim string, picker claimPicker) (api.VerifyReply, error) {
	uid, ok := claims[uidClaim].(string)
	if !ok {
		return api.VerifyReply{}, reject("missing subject")
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return api.VerifyReply{}, reject("missing claim")
	}
	name, _ := claims["name"].(string)
	sel, err := picker.pick(claims)
	if err != nil {
		return api.VerifyReply{}, err
	}
	return identity(uid, name, exp.Time, sel)
}

// jwtReason names the failure without quoting anything from the token.
func jwtReason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "unverifiable"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "not yet valid"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "issued in the future"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "missing claim"
	}
	return "invalid"
}

// MintToken signs an HS256 token for uid that expires after ttl (a negative
// ttl gives an already expired token). Issuer and audience are set when not
// empty. It serves development tooling and tests.
func MintToken(secret, issuer, audience, uid string, ttl time.Duration) (string, error) {
	return MintTokenWith(secret, issuer, audience, uid, ttl, nil)
}

// MintTokenWith is MintToken with extra claims (for example a role); they
// cannot replace the registered claims MintToken sets.
func MintTokenWith(secret, issuer, audience, uid string, ttl time.Duration, extra map[string]any) (string, error) {
	if secret == "" {
		return "", errors.New("mint token: empty secret")
	}
	if uid == "" {
		return "", errors.New("mint token: empty uid")
	}
	now := time.Now()
	claims := jwt.MapClaims{}
	for k, v := range extra {
		claims[k] = v
	}
	claims["sub"] = uid
	claims["iat"] = now.Unix()
	claims["exp"] = now.Add(ttl).Unix()
	delete(claims, "iss")
	delete(claims, "aud")
	if issuer != "" {
		claims["iss"] = issuer
	}
	if audience != "" {
		claims["aud"] = []string{audience}
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return s, nil
}
