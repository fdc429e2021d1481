#!/usr/bin/env python3
"""Writes checks.toml: the decision suite of the central profile.

Every role (administrator, manager, technician, basic, all in org `emea`) x every operation of
the seed's permission tables x own org (emea) / sub-org (spain) / parent org (acme) / sibling
org (americas), with the expected answer computed here from the central profile's rules (README, "The bundled profiles") — not from the policies —
plus cases for moves, role ranks, disabled and deleted users and bad input.
Run: python3 examples/central/checks.py
"""
import pathlib

ACTORS = {"administrator": "eve", "manager": "max", "technician": "tess", "basic": "bea"}
PLACES = {"own": "emea", "sub-org": "spain", "parent": "acme", "sibling": "americas"}
DEVICE = {"emea": "emea-gw", "spain": "spain-sensor", "acme": "acme-gw", "americas": "americas-gw"}
USER = {"emea": "bert", "spain": "bill", "acme": "abe", "americas": "andy"}  # basic users
IN_SCOPE = {"own", "sub-org"}


def other_in_scope(org):
    return "spain" if org == "emea" else "emea"


# operation -> (request builder(org) -> (method path, body), who may do it)
OPS = {
    "ViewOrg": (lambda o: (f"GET /api/orgs/{o}", None), "all"),
    "ModifyOrg": (lambda o: (f"PATCH /api/orgs/{o}", '{"name": "x"}'), "manager+"),
    "AddSubOrg": (lambda o: (f"POST /api/orgs/{o}/orgs", '{"id": "new-org"}'), "administrator"),
    "MoveSubOrg": (lambda o: (f"PUT /api/orgs/{o}/parent", '{"parent": "germany"}' if o == "spain" else '{"parent": "spain"}'), "administrator-below"),
    "DeleteSubOrg": (lambda o: (f"DELETE /api/orgs/{o}", None), "administrator-below"),
    "ViewDevice": (lambda o: (f"GET /api/devices/{DEVICE[o]}", None), "all"),
    "AddDevice": (lambda o: (f"POST /api/orgs/{o}/devices", '{"id": "new-device"}'), "technician+"),
    "ModifyDevice": (lambda o: (f"PATCH /api/devices/{DEVICE[o]}", '{"name": "x"}'), "technician+"),
    "MoveDevice": (lambda o: (f"PUT /api/devices/{DEVICE[o]}/org", f'{{"org": "{other_in_scope(o)}"}}'), "technician+"),
    "DeleteDevice": (lambda o: (f"DELETE /api/devices/{DEVICE[o]}", None), "technician+"),
    "ViewUser": (lambda o: (f"GET /api/users/{USER[o]}", None), "all"),
    "AddUser": (lambda o: (f"POST /api/orgs/{o}/users", '{"id": "new-user", "role": "basic"}'), "manager+"),
    "ModifyUser": (lambda o: (f"PATCH /api/users/{USER[o]}", '{"name": "x"}'), "manager+"),
    "MoveUser": (lambda o: (f"PUT /api/users/{USER[o]}/org", f'{{"org": "{other_in_scope(o)}"}}'), "manager+"),
    "DeleteUser": (lambda o: (f"DELETE /api/users/{USER[o]}", None), "manager+"),
    "ViewDashboard": (lambda o: (f"GET /api/orgs/{o}/dashboard", None), "all"),
    "AddWidget": (lambda o: (f"POST /api/orgs/{o}/dashboard/widgets", '{"kind": "chart"}'), "manager+"),
    "ConfigureWidget": (lambda o: (f"PATCH /api/orgs/{o}/dashboard/widgets/w1", '{"title": "x"}'), "manager+"),
    "DeleteWidget": (lambda o: (f"DELETE /api/orgs/{o}/dashboard/widgets/w1", None), "manager+"),
}


def allowed(role, who, place):
    if place not in IN_SCOPE:
        return False
    return {
        "all": True,
        "administrator": role == "administrator",
        "administrator-below": role == "administrator" and place == "sub-org",
        "manager+": role in ("administrator", "manager"),
        "technician+": role in ("administrator", "technician"),
    }[who]


cases = []


def case(name, who, request, expect, body=None, reasons=None, reason=None):
    """who=None: no token (the anonymous principal); reason: the code the client is told."""
    cases.append((name, who, request, expect, body, reasons, reason))


for role, actor in ACTORS.items():
    for op, (build, who) in OPS.items():
        for place, org in PLACES.items():
            request, body = build(org)
            expect = "allow" if allowed(role, who, place) else "deny"
            case(f"{role} {op} in {place} org", actor, request, expect, body)

# device dashboards (view for all, widgets for managers and administrators)
for role, actor in ACTORS.items():
    case(f"{role} views a device dashboard below", actor, "GET /api/devices/spain-sensor/dashboard", "allow")
    w = "allow" if role in ("administrator", "manager") else "deny"
    case(f"{role} adds a widget to a device dashboard below", actor, "POST /api/devices/spain-sensor/dashboard/widgets", w, '{"kind": "gauge"}')
    case(f"{role} views a sibling's device dashboard", actor, "GET /api/devices/usa-sensor/dashboard", "deny")
# rule 5: sub-organization moves
case("top administrator moves a region's child to another region", "ada", "PUT /api/orgs/spain/parent", "allow", '{"parent": "americas"}')
case("an organization cannot move inside itself", "ada", "PUT /api/orgs/emea/parent", "deny", '{"parent": "spain"}', ["suborg-move-destination"])
case("an organization cannot move into itself", "eve", "PUT /api/orgs/spain/parent", "deny", '{"parent": "spain"}', ["suborg-move-destination"])
case("sub-organization destination must be in scope", "eve", "PUT /api/orgs/spain/parent", "deny", '{"parent": "americas"}', ["suborg-move-destination"])
case("administrator cannot delete own organization", "eve", "DELETE /api/orgs/emea", "deny", None, ["suborg-changes-strictly-below"], "out_of_scope")
case("administrator adds a sub-organization to own organization", "eve", "POST /api/orgs/emea/orgs", "allow", '{"id": "france"}')
# rule 6: device and user moves
case("technician cannot move a device out of scope", "tess", "PUT /api/devices/spain-sensor/org", "deny", '{"org": "usa"}', ["moves-stay-in-scope"])
case("technician moves a device between sub-organizations", "tess", "PUT /api/devices/spain-sensor/org", "allow", '{"org": "germany"}')
case("manager cannot move a user to the parent org", "max", "PUT /api/users/bill/org", "deny", '{"org": "acme"}', ["moves-stay-in-scope"])
case("move without a destination is a bad request", "max", "PUT /api/users/bill/org", 400, '{"to": "spain"}')
# rule 7: roles
case("manager adds a manager (same role)", "max", "POST /api/orgs/spain/users", "allow", '{"id": "newm", "role": "manager"}')
case("manager cannot add an administrator", "max", "POST /api/orgs/spain/users", "deny", '{"id": "newa", "role": "administrator"}', ["no-role-above-own"], "role_above_own")
case("manager cannot promote a user to administrator", "max", "PATCH /api/users/bill", "deny", '{"role": "administrator"}', ["no-role-above-own"])
case("manager promotes a user to manager", "max", "PATCH /api/users/bill", "allow", '{"role": "manager"}')
case("manager cannot modify an administrator", "max", "PATCH /api/users/sara", "deny", '{"name": "x"}', ["no-acting-on-higher-roles"])
case("manager cannot delete an administrator", "max", "DELETE /api/users/sara", "deny", None, ["no-acting-on-higher-roles"])
case("manager cannot move an administrator", "max", "PUT /api/users/sara/org", "deny", '{"org": "germany"}', ["no-acting-on-higher-roles"])
case("manager modifies another manager", "max", "PATCH /api/users/sam", "allow", '{"name": "x"}')
case("administrator makes a manager an administrator", "eve", "PATCH /api/users/sam", "allow", '{"role": "administrator"}')
case("unknown role in the body is a bad request", "eve", "POST /api/orgs/spain/users", 400, '{"id": "x", "role": "superuser"}')
case("adding a user needs a role", "eve", "POST /api/orgs/spain/users", 400, '{"id": "x"}')
# rule 8, deleted accounts, deeper levels
case("disabled technician can do nothing", "dan", "GET /api/orgs/emea", 403, reason="account_disabled")
case("deleted user is refused", "zed", "GET /api/orgs/emea", 401, reason="unknown_account")
case("spain manager cannot see emea", "sam", "GET /api/orgs/emea", "deny")
case("spain manager sees own org", "sam", "GET /api/orgs/spain", "allow")
case("usa technician sees only usa", "uma", "GET /api/devices/spain-sensor", "deny")
case("top administrator deletes a deep organization", "ada", "DELETE /api/orgs/spain", "allow")
case("device history is viewable", "bea", "GET /api/devices/spain-sensor/history", "allow")
case("device settings edit is a device change", "bea", "PUT /api/devices/spain-sensor/settings", "deny")
case("unknown device is out of scope", "eve", "GET /api/devices/ghost", "deny")
case("unknown path", "eve", "GET /api/reports", 404, reason="no_route")
# write-through: a "create" never rewrites an entity that exists (its decision was on the container)
case("adding an existing org below is a conflict", "sara", "POST /api/orgs/spain/orgs", 409, '{"id": "americas"}', reason="entity_exists")
case("adding an existing user is a conflict", "sam", "POST /api/orgs/spain/users", 409, '{"id": "ada", "role": "basic"}', reason="entity_exists")
case("adding an existing device is a conflict", "tom", "POST /api/orgs/spain/devices", 409, '{"id": "acme-gw"}', reason="entity_exists")
case("adding a look-alike org is a conflict", "sara", "POST /api/orgs/spain/orgs", 409, '{"id": "AMERICAS"}', reason="entity_exists")
case("a basic user adding an existing user is refused, not told it exists", "bea", "POST /api/orgs/emea/users", "deny", '{"id": "ada", "role": "basic"}')
# public routes: signing in needs no token; nothing else is public
case("signing in needs no token", None, "POST /auth/login", "allow", '{"username": "eve", "password": "x"}', ["public-sign-in"])
case("refreshing a session needs no token", None, "POST /auth/refreshToken", "allow", '{"refreshToken": "r"}')
case("without a token the tree is closed", None, "GET /api/orgs/emea", 401, reason="token_missing")


def q(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


out = ["# Decision suite of the central profile, written by checks.py (do not edit by hand).",
       "#   iotgate check --config examples/central/iotgate.toml examples/central/checks.toml", ""]
for name, who, request, expect, body, reasons, reason in cases:
    who_line = f"as = {q(who)}" if who else "anonymous = true"
    out += ["[[case]]", f"name = {q(name)}", who_line, f"request = {q(request)}"]
    if body:
        out.append(f"body = '{body}'")
    out.append(f"expect = {expect if isinstance(expect, int) else q(expect)}")
    if reasons is not None:
        out.append("reasons = [" + ", ".join(q(r) for r in reasons) + "]")
    if reason is not None:
        out.append(f"reason = {q(reason)}")
    out.append("")
pathlib.Path(__file__).with_name("checks.toml").write_text("\n".join(out))
print(f"{len(cases)} cases")
