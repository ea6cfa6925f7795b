# shellcheck shell=bash
# provision's security steps: the deploy user and its keys, key-only SSH, the
# firewall (ufw, and Docker's published ports), fail2ban, swap. Each checks
# before it changes anything. Sourced by scripts/server.sh; defines functions
# only.

provision_sshd() {
    local dropin=/etc/ssh/sshd_config.d/10-hardening.conf backup
    grep -qE '^Include /etc/ssh/sshd_config.d/\*.conf' /etc/ssh/sshd_config ||
        die "/etc/ssh/sshd_config does not include sshd_config.d/*.conf: too old an OpenSSH setup"
    backup=$(mktemp)
    cp -p "$dropin" "$backup" 2>/dev/null || rm -f "$backup"
    # The first value sshd reads wins: 10- comes before the 50-cloud-init.conf
    # that some images ship with PasswordAuthentication yes.
    if put_file "$dropin" 644 root:root <<'EOF'; then
# Written by scripts/provision. Keys only: no passwords, ever.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PubkeyAuthentication yes
# root may still log in with a key, to run scripts/provision again. Set this
# to "no" once you have a sudo user of your own.
PermitRootLogin prohibit-password
MaxAuthTries 3
LoginGraceTime 30
X11Forwarding no
AllowAgentForwarding no
EOF
        if ! sshd -t 2>&1 | indent; then
            if [ -f "$backup" ]; then mv "$backup" "$dropin"; else rm -f "$dropin"; fi
            die "sshd -t rejects the new settings: put the old ones back, nothing reloaded"
        fi
        systemctl reload ssh 2>/dev/null || systemctl reload sshd
        changed "$dropin (checked with sshd -t, sshd reloaded)"
    else
        unchanged "$dropin: keys only"
    fi
    rm -f "$backup"
    sshd -T 2>/dev/null | grep -x 'passwordauthentication no' >/dev/null ||
        warn "sshd still accepts passwords: another file in /etc/ssh/sshd_config.d/ sets it first"
}

# ufw lets in SSH, HTTP and HTTPS only. Docker's published ports do not go
# through ufw's INPUT rules at all (Docker forwards them itself), so a
# DOCKER-USER chain, which Docker consults first, drops any connection from
# outside to a container unless it came in on port 80 or 443: whatever a
# compose file publishes by mistake (the database, say) stays unreachable.
provision_firewall() {
    local ports port status rules_changed=false listed
    ports=$( { echo 80; echo 443; sshd -T 2>/dev/null | awk '$1 == "port" { print $2 }'; } | sort -un)
    listed=$(paste -sd ' ' <<<"$ports")
    listed=${listed// /, }
    if put_docker_user_rules; then
        changed "DOCKER-USER rules in /etc/ufw/after.rules"
        rules_changed=true
    else
        unchanged "DOCKER-USER rules in /etc/ufw/after.rules: containers get ports 80 and 443 only"
    fi
    status=$(ufw status verbose)
    local wanted=true
    grep -q '^Status: active' <<<"$status" || wanted=false
    grep -q 'Default: deny (incoming), allow (outgoing)' <<<"$status" || wanted=false
    for port in $ports; do
        grep -qE "^$port/tcp +ALLOW IN +Anywhere" <<<"$status" || wanted=false
    done
    if $wanted; then
        unchanged "ufw active: incoming $listed only"
        if $rules_changed; then
            ufw reload >/dev/null
        fi
    else
        ufw default deny incoming >/dev/null
        ufw default allow outgoing >/dev/null
        for port in $ports; do
            ufw allow "$port/tcp" >/dev/null
        done
        ufw --force enable >/dev/null
        changed "ufw active: incoming $listed only"
    fi
}

put_docker_user_rules() {
    local file=/etc/ufw/after.rules begin='# BEGIN provision: Docker published ports'
    local end='# END provision: Docker published ports' block current
    block="$begin
*filter
:DOCKER-USER - [0:0]
-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A DOCKER-USER -i docker0 -j RETURN
-A DOCKER-USER -i br-+ -j RETURN
-A DOCKER-USER -p tcp -m conntrack --ctorigdstport 80 -j RETURN
-A DOCKER-USER -p tcp -m conntrack --ctorigdstport 443 -j RETURN
-A DOCKER-USER -o docker0 -j DROP
-A DOCKER-USER -o br-+ -j DROP
COMMIT
$end"
    current=$(sed -n "/^$begin\$/,/^$end\$/p" "$file")
    [ "$current" != "$block" ] || return 1
    { sed "/^$begin\$/,/^$end\$/d" "$file"; printf '%s\n' "$block"; } >"$file.new"
    chmod 640 "$file.new"
    mv "$file.new" "$file"
}

provision_fail2ban() {
    if put_file /etc/fail2ban/jail.d/sshd.local 644 root:root <<'EOF'; then
# Written by scripts/provision: ban an address for an hour after 5 failed
# SSH logins within 10 minutes. sshd logs to the journal (backend systemd);
# bans are iptables rules, the tool Docker and ufw already use.
[DEFAULT]
banaction = iptables-multiport
banaction_allports = iptables-allports

[sshd]
enabled = true
backend = systemd
journalmatch = _SYSTEMD_UNIT=ssh.service + _SYSTEMD_UNIT=sshd.service + _COMM=sshd + _COMM=sshd-session
maxretry = 5
findtime = 10m
bantime = 1h
EOF
        systemctl enable fail2ban >/dev/null 2>&1
        systemctl restart fail2ban
        changed "/etc/fail2ban/jail.d/sshd.local"
    else
        unchanged "fail2ban guards sshd (systemd backend)"
    fi
    if ! systemctl is-active --quiet fail2ban; then
        systemctl enable --now fail2ban >/dev/null 2>&1
        changed "fail2ban started"
    fi
    local _
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        fail2ban-client status sshd >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "fail2ban's sshd jail is not running: journalctl -u fail2ban"
}

provision_swap() {
    local size=$1
    if systemd-detect-virt --container --quiet; then
        # Swap and vm.* settings belong to the host's kernel, not to this.
        unchanged "swap: left alone (this is a container, on its host's memory)"
        return 0
    fi
    if [ -n "$(swapon --show --noheadings)" ]; then
        unchanged "swap: $(swapon --show=NAME,SIZE --noheadings | tr -s ' ' | paste -sd ',')"
    elif [ "$size" = 0 ]; then
        unchanged "swap: none (--swap 0)"
    else
        if [ ! -f /swapfile ]; then
            fallocate -l "$size" /swapfile
            chmod 600 /swapfile
            mkswap /swapfile >/dev/null
        fi
        swapon /swapfile
        grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' >>/etc/fstab
        changed "swap: /swapfile, $size"
    fi
    # Swap is the safety net for a memory spike, not working memory.
    if put_file /etc/sysctl.d/60-swappiness.conf 644 root:root <<<'vm.swappiness = 10'; then
        sysctl --quiet --load /etc/sysctl.d/60-swappiness.conf
        changed "vm.swappiness = 10"
    fi
}

# provision_user USER [KEY_FILE | --restricted KEY_FILE]...
provision_user() {
    local user=$1 files=() restricted=() home admin_home authorized count
    shift
    while [ $# -gt 0 ]; do
        if [ "$1" = --restricted ]; then restricted+=("$2") && shift; else files+=("$1"); fi
        shift
    done
    if ! id "$user" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash --user-group "$user"
        # No password at all ('*', not a locked '!'): SSH keys only.
        usermod --password '*' "$user"
        changed "user $user"
    else
        unchanged "user $user"
    fi
    if [[ " $(id -nG "$user") " == *" docker "* ]]; then
        unchanged "$user is in the docker group (root-equivalent: it runs the stack)"
    else
        usermod --append --groups docker "$user"
        changed "$user added to the docker group"
    fi

    home=$(getent passwd "$user" | cut -d: -f6)
    authorized=$home/.ssh/authorized_keys
    install -d -m 700 -o "$user" -g "$user" "$home/.ssh"
    touch "$authorized"
    # CI's keys first, restricted: deploys run commands without a terminal
    # and forward nothing, and a leaked CI key should give no more than that.
    if [ ${#restricted[@]} -gt 0 ]; then
        count=$(authorize_keys "$authorized" restrict "${restricted[@]}")
        if [ "$count" -gt 0 ]; then
            changed "$count CI key(s) allowed for $user, restricted (no forwarding, no terminal)"
        else
            unchanged "CI keys of $user, restricted"
        fi
    fi
    # Then those that log the admin in (root's, or the sudo user's), and any
    # given. Keys are only ever added, never removed nor loosened.
    admin_home=$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)
    count=$(authorize_keys "$authorized" "" "$admin_home/.ssh/authorized_keys" ${files[@]+"${files[@]}"})
    chown "$user:$user" "$authorized"
    chmod 600 "$authorized"
    [ -s "$authorized" ] || die "no SSH key would let $user log in: pass --ssh-key FILE"
    if [ "$count" -gt 0 ]; then
        changed "$count SSH key(s) allowed for $user"
    else
        unchanged "SSH keys of $user"
    fi
}

# authorize_keys AUTHORIZED_KEYS OPTIONS FILE...: let the public keys in the
# FILEs (lines without options; missing files are skipped) log in through
# AUTHORIZED_KEYS, with OPTIONS (comma-separated, or "") in front. A key
# already there is never loosened; one that lacks any of OPTIONS gets them
# in front of its own. Prints how many lines it added or changed.
authorize_keys() {
    local file=$1 options=$2 lines=() wanted=() keys type blob comment i line prefix missing option count=0
    shift 2
    IFS=, read -r -a wanted <<<"$options"
    keys=$(cat "$@" 2>/dev/null | grep -E '^(ssh-|ecdsa-|sk-)' || true)
    [ ! -s "$file" ] || mapfile -t lines <"$file"
    while read -r type blob comment; do
        [ -n "$blob" ] || continue
        line=""
        for i in "${!lines[@]}"; do
            # A line is [OPTIONS ]TYPE BLOB[ COMMENT]: this key's, whatever
            # its options, if it holds "TYPE BLOB" as words.
            [[ " ${lines[$i]} " == *" $type $blob "* ]] || continue
            line=${lines[$i]} prefix=${line%%"$type $blob"*} missing=""
            prefix=${prefix% }
            for option in ${wanted[@]+"${wanted[@]}"}; do
                [[ ",$prefix," == *",$option,"* ]] || missing+=${missing:+,}$option
            done
            if [ -n "$missing" ]; then
                lines[i]="$missing${prefix:+,$prefix} $type $blob${line#*"$type $blob"}"
                count=$((count + 1))
            fi
        done
        if [ -z "$line" ]; then
            lines+=("${options:+$options }$type $blob${comment:+ $comment}")
            count=$((count + 1))
        fi
    done <<<"$keys"
    [ "$count" -eq 0 ] || printf '%s\n' "${lines[@]}" >"$file"
    echo "$count"
}
