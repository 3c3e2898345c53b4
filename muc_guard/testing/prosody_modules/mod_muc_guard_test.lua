-- mod_muc_guard_test: fault injection for muc_guard's integration tests.
--
-- Load it on the MUC component (Component "conference.localhost" "muc" with
-- modules_enabled = { "muc_guard_test" }).  It exposes the global table
-- `muc_guard_test`, driven from muc_guard/testing/prosody.py through the admin socket:
--
--   >muc_guard_test.call("<function>", "<json array of arguments>")
--
-- `call` never raises: it returns one JSON string, either
-- {"ok":true,"result":...} or {"ok":false,"error":"..."}, so the Python side
-- can tell Lua errors from results without parsing Prosody's console prose.
--
-- Every fault goes through Prosody's own room API (muc.lib.lua) so that the
-- room state really changes the way it would in production.

local st = require "util.stanza";
local json = require "util.json";
local array = require "util.array";
local jid_util = require "util.jid";
local time_now = require "util.time".now;

local jid_bare, jid_prep, jid_resource = jid_util.bare, jid_util.prep, jid_util.resource;

local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

local api = {};

-- rewrite rules for rewrite_nick(): rewrites[room_jid][requested_nick] = assigned_nick
local rewrites = {};

-- refusals for refuse_joins(): refusals[room_jid] = { type, condition, text, count }
local refusals = {};

local function muc()
	local host = prosody.hosts[module.host];
	local mod = host and host.modules.muc;
	if not mod then error("mod_muc is not loaded on " .. module.host); end
	return mod;
end

local function room_jid_of(room_jid)
	local prepped = jid_prep(room_jid);
	if not prepped or jid_bare(prepped) ~= prepped then
		error("not a bare room JID: " .. tostring(room_jid));
	end
	return prepped;
end

-- Existing room (live or restored from storage), or nil.  Tombstones of
-- destroyed rooms are returned too (room._data.destroyed).
local function find_room(room_jid)
	return muc().get_room_from_jid(room_jid_of(room_jid));
end

local function get_room(room_jid)
	local room = find_room(room_jid);
	if not room then error("no such room: " .. tostring(room_jid)); end
	if room._data.destroyed then error("room is a tombstone (destroyed): " .. room.jid); end
	return room;
end

local function get_occupant(room, nick)
	local occupant = room:get_occupant_by_nick(room.jid .. "/" .. nick);
	if not occupant then error("no occupant " .. tostring(nick) .. " in " .. room.jid); end
	return occupant;
end

local function live_sessions(occupant)
	local jids = array();
	for real_jid, presence in occupant:each_session() do
		if presence.attr.type == nil then jids:push(real_jid); end
	end
	jids:sort();
	return jids;
end

-- nick -> sorted list of real full JIDs with a live session, straight from
-- room._occupants.  {} when the room does not exist.
function api.occupants(room_jid)
	local result = {};
	local room = find_room(room_jid);
	if not room then return result; end
	for occupant_jid, occupant in room:each_occupant() do
		result[jid_resource(occupant_jid)] = live_sessions(occupant);
	end
	return result;
end

-- Everything a test may want to assert about a room.
function api.room_info(room_jid)
	local room = find_room(room_jid);
	if not room then return { exists = false }; end
	local occupants = {};
	for occupant_jid, occupant in room:each_occupant() do
		occupants[jid_resource(occupant_jid)] = {
			bare_jid = occupant.bare_jid;
			role = occupant.role;
			sessions = live_sessions(occupant);
		};
	end
	local affiliations = {};
	for jid, affiliation in room:each_affiliation() do
		affiliations[jid] = affiliation;
	end
	return {
		exists = true;
		jid = room.jid;
		destroyed = room._data.destroyed and true or false;
		persistent = room._data.persistent and true or false;
		members_only = room._data.members_only and true or false;
		archiving = room._data.archiving;
		locked = room._data.locked;
		occupants = occupants;
		affiliations = affiliations;
	};
end

-- Mirror of room_mt:handle_kickable (muc.lib.lua), but for every session of
-- the occupant and with caller-chosen status codes instead of 333:
-- the occupant's sessions get an unavailable self-presence with these codes
-- (+110, added by publicise_occupant_status) and <status>reason</status>;
-- the other occupants get the same unavailable without 110.
function api.kick_with_codes(room_jid, nick, codes, reason)
	local room = get_room(room_jid);
	local occupant = get_occupant(room, nick);
	local unavailable = st.presence({ type = "unavailable" });
	if reason and reason ~= "" then
		unavailable:tag("status"):text(reason):up();
	end
	local real_jids = array();
	for real_jid in occupant:each_session() do real_jids:push(real_jid); end
	for _, real_jid in ipairs(real_jids) do
		occupant:set_session(real_jid, unavailable);
	end
	local orig_role = occupant.role;
	occupant.role = nil;
	room:save_occupant(occupant);
	local x = st.stanza("x", { xmlns = xmlns_muc_user });
	for _, code in ipairs(codes or {}) do
		x:tag("status", { code = tostring(math.tointeger(code) or code) }):up();
	end
	room:publicise_occupant_status(occupant, x, nil, nil, nil, orig_role);
	module:fire_event("muc-occupant-left", { room = room; nick = occupant.nick; occupant = occupant; });
	return real_jids;
end

-- Drop the occupant from the room state without sending anything to anyone.
-- save_occupant() with role=nil removes it from _occupants and _jid_nick,
-- exactly as a real departure does, so self-pings get not-acceptable.
function api.silent_remove(room_jid, nick)
	local room = get_room(room_jid);
	local occupant = get_occupant(room, nick);
	local real_jids = live_sessions(occupant);
	occupant.role = nil;
	room:save_occupant(occupant);
	-- No stanza is routed by this event's handlers (mod_muc may destroy an
	-- empty non-persistent room, which is also silent).
	module:fire_event("muc-occupant-left", { room = room; nick = occupant.nick; occupant = occupant; });
	return real_jids;
end

-- The opposite of silent_remove: make the room hold occupant `nick` for the
-- session `real_jid` without any stanza being sent, like a server that kept
-- the occupant of a client that went away (e.g. a remote MUC that never
-- noticed the client's stream dying).
function api.keep_occupant(room_jid, nick, real_jid)
	local room = get_room(room_jid);
	local occupant_jid = room.jid .. "/" .. nick;
	if room:get_occupant_by_nick(occupant_jid) then error("nick is taken: " .. nick); end
	if room:get_occupant_jid(real_jid) then error(real_jid .. " is already an occupant"); end
	local occupant = room:new_occupant(jid_bare(real_jid), occupant_jid);
	occupant:set_session(real_jid, st.presence({ from = real_jid, to = occupant_jid }), true);
	room:save_occupant(occupant);
	return live_sessions(get_occupant(room, nick));
end

-- Prosody's real error-bounce path: feed the room a presence of type error
-- from one of the occupant's sessions (like a bounce from a dead client).
-- handle_kickable() removes that session with 110+333 "Kicked: <condition>".
function api.bounce_error(room_jid, nick, condition)
	local room = get_room(room_jid);
	local occupant = get_occupant(room, nick);
	local real_jid = occupant.jid;
	local bounce = st.presence({ from = real_jid, to = occupant.nick, type = "error" })
		:tag("error", { type = "cancel" })
			:tag(condition or "recipient-unavailable", { xmlns = "urn:ietf:params:xml:ns:xmpp-stanzas" }):up()
		:up();
	local origin = prosody.full_sessions[real_jid] or { send = function () end; };
	room:handle_presence_to_occupant(origin, bounce);
	return real_jid;
end

-- Standard moderator kick (role none): 307.
function api.kick(room_jid, nick, reason)
	local room = get_room(room_jid);
	local ok, err_type, condition = room:set_role(true, room.jid .. "/" .. nick, "none", reason ~= "" and reason or nil);
	if not ok then error(("kick failed: %s %s"):format(tostring(err_type), tostring(condition))); end
	return true;
end

local function set_affiliation(room, bare_jid, affiliation, reason)
	local ok, err_type, condition = room:set_affiliation(true, bare_jid, affiliation, reason ~= "" and reason or nil);
	if not ok then
		error(("set_affiliation(%s, %s) failed: %s %s"):format(bare_jid, affiliation, tostring(err_type), tostring(condition)));
	end
end

-- Outcast affiliation: 301.
function api.ban(room_jid, bare_jid, reason)
	set_affiliation(get_room(room_jid), bare_jid, "outcast", reason);
	return true;
end

function api.set_affiliation(room_jid, bare_jid, affiliation, reason)
	set_affiliation(get_room(room_jid), bare_jid, affiliation, reason);
	return true;
end

function api.grant_membership(room_jid, bare_jid)
	set_affiliation(get_room(room_jid), bare_jid, "member", "");
	return true;
end

-- room:destroy(): unavailable with <destroy/> to everyone, then the room is
-- deleted; a persistent room leaves a tombstone (muc_tombstones).
function api.destroy(room_jid, reason, alternate)
	local room = get_room(room_jid);
	local ok, err = room:destroy(alternate ~= "" and alternate or nil, reason ~= "" and reason or nil);
	if not ok then error("destroy failed: " .. tostring(err)); end
	return true;
end

-- Members-only switch: non-members are removed with 322.
function api.set_members_only(room_jid, members_only)
	local room = get_room(room_jid);
	local changed = room:set_members_only(members_only ~= false);
	room:save(true);
	return changed;
end

-- Affiliation member -> none in a members-only room: 321.  If the room is not
-- members-only yet, the user is made a member first (so the switch does not
-- remove it with 322) and the room is switched.
function api.revoke_membership(room_jid, bare_jid)
	local room = get_room(room_jid);
	bare_jid = jid_bare(jid_prep(bare_jid));
	if not room:get_members_only() then
		local affiliation = room:get_affiliation(bare_jid);
		if affiliation == nil or affiliation == "none" then
			set_affiliation(room, bare_jid, "member", "");
		end
		room:set_members_only(true);
		room:save(true);
	end
	set_affiliation(room, bare_jid, "none", "");
	return true;
end

-- Create (or reconfigure) a room server-side.  A room created here has no
-- owner, so every joining user is a plain participant (affiliation none).
function api.create_room(room_jid, options)
	options = options or {};
	local jid = room_jid_of(room_jid);
	local room = muc().get_room_from_jid(jid);
	if room and room._data.destroyed then
		muc().delete_room(room);
		room = nil;
	end
	local created = false;
	if not room then
		local err;
		room, err = muc().create_room(jid);
		if not room then error("create_room failed: " .. tostring(err)); end
		created = true;
	end
	if options.persistent ~= nil then room:set_persistent(options.persistent); end
	if options.members_only ~= nil then room:set_members_only(options.members_only); end
	if options.mam ~= nil then room._data.archiving = options.mam; end
	if options.whois ~= nil then room:set_whois(options.whois); end
	if options.password ~= nil then room:set_password(options.password); end
	if options.history_length ~= nil then
		-- what muc/history.lib.lua's config form sets (default 20)
		room._data.history_length = options.history_length;
		room._data.default_history_messages = options.history_length;
	end
	room:save(true);
	return created;
end

-- Make the room vanish: forgotten in memory, deleted from storage, no
-- stanza to anyone, no tombstone.  Its former occupants are not told.
function api.drop_room(room_jid)
	local room = find_room(room_jid);
	if not room then return false; end
	muc().forget_room(room);
	muc().delete_room(room);
	return true;
end

-- What muc_log_expires_after does to a room's archive (mod_muc_mam's
-- cleanup): delete every message archived more than `age` seconds ago (0:
-- everything archived so far; Prosody 13 stores fractional times, so the
-- bound is not rounded).  The room itself is untouched.
function api.expire_archive(room_jid, age)
	local jid = room_jid_of(room_jid);
	local archive = module:open_store("muc_log", "archive");
	local ok, err = archive:delete(jid_util.node(jid), { ["end"] = time_now() - (age or 0) });
	if not ok then error("archive delete failed: " .. tostring(err)); end
	return true;
end

function api.rewrite_nick(room_jid, requested, assigned)
	local jid = room_jid_of(room_jid);
	rewrites[jid] = rewrites[jid] or {};
	rewrites[jid][requested] = assigned;
	return true;
end

function api.clear_rewrites(room_jid)
	if room_jid then
		rewrites[room_jid_of(room_jid)] = nil;
	else
		rewrites = {};
	end
	return true;
end

-- Answer every join presence to the room with this error (e.g. a remote MUC
-- that cannot be reached: "wait", "remote-server-timeout") until cleared.
-- Counts the joins it refused, for backoff tests.
function api.refuse_joins(room_jid, error_type, condition, text)
	refusals[room_jid_of(room_jid)] = { type = error_type, condition = condition,
		text = text, count = 0 };
	return true;
end

function api.clear_refusals(room_jid)
	local jid = room_jid_of(room_jid);
	local refusal = refusals[jid];
	refusals[jid] = nil;
	return refusal and refusal.count or 0;
end

function api.refused_count(room_jid)
	local refusal = refusals[room_jid_of(room_jid)];
	return refusal and refusal.count or 0;
end

module:hook("presence/full", function (event)
	local stanza = event.stanza;
	local refusal = refusals[jid_bare(stanza.attr.to)];
	if not refusal or stanza.attr.type ~= nil then return; end
	if not stanza:get_child("x", "http://jabber.org/protocol/muc") then return; end
	refusal.count = refusal.count + 1;
	event.origin.send(st.error_reply(stanza, refusal.type, refusal.condition, refusal.text));
	return true;
end, 20);

-- Archive faults for fail_archive_pages(): archive_faults[room_jid] =
-- { pass, fail, mode, condition, passed, failed }: the room's next `pass`
-- archive queries (pages) are answered normally, the `fail` after them with
-- an error (mode "error") or not at all (mode "drop"), and the rest
-- normally again.  Runs before mod_muc_mam's handler.
local archive_faults = {};

function api.fail_archive_pages(room_jid, pass, fail, mode, condition)
	archive_faults[room_jid_of(room_jid)] = { pass = pass or 0, fail = fail or 1,
		mode = mode or "error", condition = condition or "internal-server-error",
		passed = 0, failed = 0 };
	return true;
end

function api.clear_archive_faults(room_jid)
	local jid = room_jid_of(room_jid);
	local fault = archive_faults[jid];
	archive_faults[jid] = nil;
	return fault and fault.failed or 0;
end

function api.archive_faults_fired(room_jid)
	local fault = archive_faults[room_jid_of(room_jid)];
	return fault and fault.failed or 0;
end

module:hook("iq-set/bare/urn:xmpp:mam:2:query", function (event)
	local stanza = event.stanza;
	local fault = archive_faults[jid_bare(stanza.attr.to)];
	if not fault then return; end
	if fault.passed < fault.pass then fault.passed = fault.passed + 1; return; end
	if fault.failed >= fault.fail then return; end
	fault.failed = fault.failed + 1;
	module:log("info", "archive fault %d/%d (%s) on %s", fault.failed, fault.fail,
		fault.mode, stanza.attr.to);
	if fault.mode == "error" then
		event.origin.send(st.error_reply(stanza, "cancel", fault.condition));
	end
	return true;
end, 10);

-- Cut a client's TCP connection without a stream close (server side), like a
-- network failure.  With mod_smacks the session hibernates (a ghost).
function api.sever_c2s(full_jid)
	local session = prosody.full_sessions[jid_prep(full_jid)];
	if not session then error("no c2s session " .. tostring(full_jid)); end
	if not session.conn then error("session has no connection (hibernating?)"); end
	session.conn:close();
	return true;
end

function api.c2s_sessions(bare_jid)
	local result = array();
	local user = prosody.bare_sessions[jid_bare(jid_prep(bare_jid))];
	if user then
		for _, session in pairs(user.sessions) do
			result:push({
				full_jid = session.full_jid;
				hibernating = session.hibernating and true or false;
				smacks = session.smacks and true or false;
			});
		end
	end
	return result;
end

-- The nick rewrite behind rewrite_nick(): like enforce_registered_nickname
-- in muc/register.lib.lua, change the new occupant's nick in pre-join, which
-- makes muc.lib.lua add status 210 to the self-presence.
module:hook("muc-occupant-pre-join", function (event)
	local room, stanza = event.room, event.stanza;
	local rules = rewrites[room.jid];
	if not rules then return; end
	local assigned = rules[jid_resource(stanza.attr.to)];
	if not assigned then return; end
	local new_nick = room.jid .. "/" .. assigned;
	local holder = room:get_occupant_by_nick(new_nick);
	if holder and holder.bare_jid ~= jid_bare(stanza.attr.from) then
		event.origin.send(st.error_reply(stanza, "cancel", "conflict", nil, room.jid));
		return true;
	end
	module:log("debug", "rewriting join of %s to %s", stanza.attr.to, new_nick);
	event.occupant.nick = new_nick;
end, 100);

-- A session already joined under the assigned nick that (re)sends presence to
-- the requested nick is treated as sending it to the assigned one (a
-- presence update / desync rejoin), instead of a nick change.
module:hook("presence/full", function (event)
	local stanza = event.stanza;
	local room_jid = jid_bare(stanza.attr.to);
	local rules = rewrites[room_jid];
	if not rules or (stanza.attr.type ~= nil and stanza.attr.type ~= "unavailable") then return; end
	local assigned = rules[jid_resource(stanza.attr.to)];
	if not assigned then return; end
	local room = muc().get_room_from_jid(room_jid);
	if not room or room._data.destroyed then return; end
	if room:get_occupant_jid(stanza.attr.from) == room_jid .. "/" .. assigned then
		stanza.attr.to = room_jid .. "/" .. assigned;
	end
end, 10);

local function encode_result(ok, value)
	if ok then
		return json.encode({ ok = true; result = value == nil and json.null or value });
	end
	return json.encode({ ok = false; error = tostring(value) });
end

-- Entry point for the admin shell: name + JSON array of arguments -> JSON.
function api.call(name, args_json)
	local f = api[name];
	if type(f) ~= "function" or name == "call" then
		return encode_result(false, "unknown function: " .. tostring(name));
	end
	local args, err = json.decode(args_json or "[]");
	if type(args) ~= "table" then
		return encode_result(false, "bad arguments: " .. tostring(err));
	end
	local n = 0;
	for i in pairs(args) do if type(i) == "number" and i > n then n = i; end end
	for i = 1, n do if args[i] == json.null then args[i] = nil; end end
	local ok, result = xpcall(function () return f(table.unpack(args, 1, n)); end, function (e)
		module:log("debug", "muc_guard_test.%s: %s", name, debug.traceback(e, 2));
		return e;
	end);
	if not ok then module:log("warn", "muc_guard_test.%s failed: %s", name, result); end
	return encode_result(ok, result);
end

function module.load()
	-- Prosody locks globals (util.startup): rawset is the sanctioned bypass.
	rawset(_G, "muc_guard_test", api);
	module:log("info", "muc_guard_test fault injection loaded on %s", module.host);
end

function module.unload()
	if rawget(_G, "muc_guard_test") == api then
		rawset(_G, "muc_guard_test", nil);
	end
end
