"""A small patch of Nuitka's onefile launcher (OnefileBootstrap.c of the pinned Nuitka) for the cached payload.

Stock Nuitka 4.3.3, with `--onefile-tempdir-spec={CACHE_DIR}/...`, dies with "Error, couldn't create file" when
that folder cannot be written (HOME read-only or missing, as with Kubernetes' readOnlyRootFilesystem or a user
without a home), and two first starts at the same time write the same files while the other's child may already
have them mapped. The patch, applied to the venv's copy of Nuitka before compiling (idempotent, checked by marker):

1. creates the cache folder (mode 0700 for what it creates); if that fails or the folder is not writable and holds
   no unpacked payload yet, it falls back to `$TMPDIR/airuntime-<uid>/<version>-<commit>` (default /tmp) -- a
   folder made with mode 0700 and used only if it is a real directory owned by the user and not writable by
   others; if neither works it says so in one line, naming XDG_CACHE_HOME, and exits 1;
2. a read-only folder that already holds the payload (e.g. unpacked at image build time) is used as it is: files
   whose checksum matches are not written, as in stock Nuitka;
3. holds an exclusive flock on `<folder>/.lock` while unpacking, so concurrent first starts take turns;
4. after a complete unpack writes `<folder>/.complete` (payload size and main program, written atomically), and a
   later start that finds a matching marker skips decompressing and checksumming the whole payload (stock Nuitka
   does that on every start: about 0.2 s here) and starts the program at once. Not in the TMPDIR fallback, where
   cleaners may delete files: there every start verifies, as stock Nuitka does (AIRUNTIME_ONEFILE_VERIFY=1 forces
   that everywhere);
5. then *becomes* the program (execv) instead of forking it and waiting: with a cached payload the launcher has
   nothing to clean up afterwards, so one process instead of two -- no launcher memory, signals and exit codes
   direct, nothing left behind by a SIGKILL. AIRUNTIME_ONEFILE_FORK=1 restores stock Nuitka's launcher + child.

`AIRUNTIME_ONEFILE_DEBUG=1` prints the folder chosen.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "/* airuntime onefile patch v3 */"

HELPERS = r"""
/* airuntime onefile patch v3 */
#if !defined(_WIN32) && !defined(_NUITKA_ONEFILE_TEMP_BOOL)
#include <fcntl.h>
#include <sys/file.h>

static int airuntime_lock_fd = -1;
static bool airuntime_use_marker = false;
static bool airuntime_writable = false;

static bool airuntimeMakeDirs(char *path) {
    size_t length = strlen(path);
    for (size_t i = 1; i <= length; i++) {
        if (path[i] == '/' || path[i] == 0) {
            char saved = path[i];
            path[i] = 0;
            int res = mkdir(path, 0700);
            int err = errno;
            path[i] = saved;
            if (res != 0 && err != EEXIST) {
                errno = err;
                return false;
            }
        }
    }
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool airuntimeHasEntries(char const *path) {
    DIR *dir = opendir(path);
    if (dir == NULL) {
        return false;
    }
    bool found = false;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0 &&
            strcmp(entry->d_name, ".lock") != 0) {
            found = true;
            break;
        }
    }
    closedir(dir);
    return found;
}

static void airuntimeLockPayload(void) {
    char lock_path[4200];
    snprintf(lock_path, sizeof(lock_path), "%s/.lock", payload_path);
    airuntime_lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (airuntime_lock_fd >= 0) {
        while (flock(airuntime_lock_fd, LOCK_EX) != 0 && errno == EINTR) {
        }
    }
}

static void airuntimeUnlockPayload(void) {
    if (airuntime_lock_fd >= 0) {
        close(airuntime_lock_fd);
        airuntime_lock_fd = -1;
    }
}

/* `.complete` names the payload size and the main program of a finished unpack; see build/onefile_patch.py. */
static bool airuntimeReadMarker(char *first, size_t first_size) {
    if (!airuntime_use_marker) {
        return false;
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/.complete", payload_path);
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        return false;
    }
    unsigned long long size = 0;
    char name[4096];
    bool ok = fscanf(file, "%llu\n", &size) == 1 && fgets(name, sizeof(name), file) != NULL;
    fclose(file);
    if (!ok || size != (unsigned long long)payload_size) {
        return false;
    }
    size_t length = strlen(name);
    if (length > 0 && name[length - 1] == '\n') {
        name[--length] = 0;
    }
    size_t prefix = strlen(payload_path);
    if (strncmp(name, payload_path, prefix) != 0 || name[prefix] != '/' || access(name, X_OK) != 0) {
        return false;
    }
    snprintf(first, first_size, "%s", name);
    return true;
}

static void airuntimeWriteMarker(char const *first) {
    if (!airuntime_use_marker || !airuntime_writable || first[0] == 0) {
        return;
    }
    char path[4200], tmp_path[4300];
    snprintf(path, sizeof(path), "%s/.complete", payload_path);
    snprintf(tmp_path, sizeof(tmp_path), "%s/.complete.%ld", payload_path, (long)getpid());
    FILE *file = fopen(tmp_path, "w");
    if (file == NULL) {
        return;
    }
    bool ok = fprintf(file, "%llu\n%s\n", (unsigned long long)payload_size, first) > 0;
    ok = fclose(file) == 0 && ok;
    if (!ok || rename(tmp_path, path) != 0) {
        unlink(tmp_path);
    }
}

/* Pick a folder that can hold the payload; true when a finished unpack is there (then `first` is set). */
static bool airuntimePreparePayloadPath(char *first, size_t first_size) {
    bool debug = getenv("AIRUNTIME_ONEFILE_DEBUG") != NULL;
    char first_choice[4096];
    snprintf(first_choice, sizeof(first_choice), "%s", payload_path);

    int first_errno = 0;
    if (airuntimeMakeDirs(payload_path)) {
        if (access(payload_path, W_OK) == 0) {
            airuntime_writable = true;
            airuntime_use_marker = getenv("AIRUNTIME_ONEFILE_VERIFY") == NULL;
            bool done = airuntimeReadMarker(first, first_size);
            if (!done) {
                airuntimeLockPayload();
                done = airuntimeReadMarker(first, first_size);
                if (done) {
                    airuntimeUnlockPayload();
                }
            }
            if (debug) {
                fprintf(stderr, "airuntime onefile: payload in %s%s\n", payload_path, done ? " (unpacked)" : "");
            }
            return done;
        }
        first_errno = errno;
        if (airuntimeHasEntries(payload_path)) {
            airuntime_use_marker = getenv("AIRUNTIME_ONEFILE_VERIFY") == NULL;
            bool done = airuntimeReadMarker(first, first_size);
            if (debug) {
                fprintf(stderr, "airuntime onefile: read-only payload in %s%s\n", payload_path,
                        done ? " (unpacked)" : "");
            }
            return done;
        }
    } else {
        first_errno = errno;
    }

    char const *base_name = strrchr(first_choice, '/');
    base_name = base_name != NULL ? base_name + 1 : first_choice;
    char const *tmp_dir = getenv("TMPDIR");
    if (tmp_dir == NULL || tmp_dir[0] != '/') {
        tmp_dir = "/tmp";
    }
    char user_dir[4096];
    snprintf(user_dir, sizeof(user_dir), "%s/airuntime-%ld", tmp_dir, (long)getuid());
    mkdir(user_dir, 0700);
    struct stat st;
    bool safe = lstat(user_dir, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid() &&
                (st.st_mode & (S_IWGRP | S_IWOTH)) == 0;
    char fallback[4096];
    snprintf(fallback, sizeof(fallback), "%s/%s", user_dir, base_name);
    if (safe && airuntimeMakeDirs(fallback) && access(fallback, W_OK) == 0) {
        if (debug) {
            fprintf(stderr, "airuntime onefile: %s not usable (%s), payload in %s\n", first_choice,
                    strerror(first_errno), fallback);
        }
        payload_path[0] = 0;
        appendStringSafeFilename(payload_path, fallback, sizeof(payload_path) / sizeof(filename_char_t));
        airuntimeLockPayload();
        return false;
    }
    fprintf(stderr,
            "airuntime: cannot unpack to %s (%s) nor to %s; set XDG_CACHE_HOME (or TMPDIR) to a writable "
            "folder\n",
            first_choice, strerror(first_errno), fallback);
    exit(1);
}
#endif
"""

# (anchor, text inserted after the anchor)
PATCHES = [
    ("static filename_char_t payload_path[4096] = {0};\n", HELPERS),
    (
        "    if (unlikely(bool_res == false)) {\n        fatalErrorSpec(pattern);\n    }\n",
        "#if !defined(_WIN32) && !defined(_NUITKA_ONEFILE_TEMP_BOOL)\n"
        "    bool airuntime_unpacked = false;\n"
        "    if (process_role == NULL) {\n"
        "        airuntime_unpacked = airuntimePreparePayloadPath(first_filename, sizeof(first_filename));\n"
        "    }\n#else\n    bool const airuntime_unpacked = false;\n#endif\n",
    ),
    (
        "    for (;;) {\n        filename_char_t *filename = readPayloadFilename();\n",
        None,
    ),
    (
        "#else\n    pid_t pid = fork();\n",
        None,
    ),
    (
        '    NUITKA_PRINT_TIMING("ONEFILE: Finishing decompression, cleanup payload.");\n',
        "#if !defined(_WIN32) && !defined(_NUITKA_ONEFILE_TEMP_BOOL)\n"
        "    if (!airuntime_unpacked) {\n        airuntimeWriteMarker(first_filename);\n    }\n"
        "    airuntimeUnlockPayload();\n#endif\n",
    ),
]


def bootstrap_source() -> Path:
    import nuitka

    return Path(nuitka.__file__).resolve().parent / "build" / "static_src" / "OnefileBootstrap.c"


# Inserted before an anchor whose addition is None.
BEFORE = {
    # before the decompression loop: `if (!airuntime_unpacked)` makes the whole `for (;;)` loop conditional
    "    for (;;) {\n        filename_char_t *filename = readPayloadFilename();\n": "    if (!airuntime_unpacked)\n",
    # before the fork on POSIX: exec the program directly (see 5. above)
    "#else\n    pid_t pid = fork();\n": (
        "#else\n"
        "#if !defined(_NUITKA_ONEFILE_TEMP_BOOL)\n"
        '    if (getenv("AIRUNTIME_ONEFILE_FORK") == NULL) {\n'
        "        argv[0] = (char *)getBinaryPath();\n"
        "        execv(fork_binary, argv);\n"
        '        fatalErrorChild("Error, couldn\'t launch the program (exec)", errno);\n'
        "    }\n"
        "#endif\n"
    ),
}


def patched(original: str, source: Path) -> str:
    text = original
    for anchor, addition in PATCHES:
        if text.count(anchor) != 1:
            raise SystemExit(f"onefile_patch: anchor not found once in {source} (other Nuitka version?): {anchor!r}")
        if addition is None:
            before = BEFORE[anchor]
            # an anchor starting with "#else" keeps it first: the insertion goes right after that line
            if anchor.startswith("#else\n"):
                text = text.replace(anchor, before + anchor[len("#else\n") :])
            else:
                text = text.replace(anchor, before + anchor)
        else:
            text = text.replace(anchor, anchor + addition)
    return text


def apply() -> None:
    """Patch the venv's Nuitka; the pristine file is kept beside it as OnefileBootstrap.c.orig-<nuitka version>."""
    import importlib.metadata

    source = bootstrap_source()
    backup = source.with_name(f"{source.name}.orig-{importlib.metadata.version('nuitka')}")
    text = source.read_text(encoding="utf-8")
    if MARKER in text:
        return
    if backup.exists():
        original = backup.read_text(encoding="utf-8")
    elif "airuntime onefile patch" in text:
        raise SystemExit(
            f"onefile_patch: {source} carries an older patch and no .orig; reinstall Nuitka: "
            "pip install --force-reinstall --no-deps nuitka"
        )
    else:
        original = text
        backup.write_text(original, encoding="utf-8")
    source.write_text(patched(original, source), encoding="utf-8")
    print(f"build_binary: patched {source} (cache-folder fallback, unpack lock, completion marker)", flush=True)


if __name__ == "__main__":
    apply()
