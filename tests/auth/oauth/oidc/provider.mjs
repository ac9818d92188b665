// A real OpenID Provider for tests: panva/oidc-provider (OpenID certified), configured from
// the environment. Interactions complete on their own: the account is the login_hint (an
// email; addresses starting with "unverified" come with email_verified=false) and consent
// is granted for what the client asked.
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const clients = JSON.parse(process.env.OIDC_CLIENTS);

const provider = new Provider(issuer, {
  clients,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: `sub-${Buffer.from(id).toString('hex')}`,
          email: id,
          email_verified: !id.startsWith('unverified'),
          name: `Test ${id.split('@')[0]}`,
        };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['aistack-test-cookie-key'] },
});

provider.use(async (ctx, next) => {
  if (!/^\/interaction\/[^/]+$/.test(ctx.path)) {
    await next();
    return;
  }
  const { prompt, params, session } = await provider.interactionDetails(ctx.req, ctx.res);
  let result;
  if (prompt.name === 'login') {
    if (!params.login_hint) {
      ctx.status = 400;
      ctx.body = 'login_hint required by this test provider';
      return;
    }
    result = { login: { accountId: params.login_hint } };
  } else {
    const grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    grant.addOIDCScope(params.scope);
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    result = { consent: { grantId: await grant.save() } };
  }
  ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result));
});

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`ready ${issuer}\n`);
});
