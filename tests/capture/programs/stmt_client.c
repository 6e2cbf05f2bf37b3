/* A MariaDB client that uses the binary protocol's prepared statements
 * (COM_STMT_PREPARE, COM_STMT_EXECUTE), which the command-line client never does.
 * usage: stmt_client SOCKET DATABASE "SQL with ?" INT-PARAM [REPEAT]  */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc < 5)
		return 2;
	MYSQL *db = mysql_init(NULL);
	if (!mysql_real_connect(db, NULL, "root", NULL, argv[2], 0, argv[1], 0)) {
		fprintf(stderr, "connect: %s\n", mysql_error(db));
		return 1;
	}
	MYSQL_STMT *stmt = mysql_stmt_init(db);
	if (mysql_stmt_prepare(stmt, argv[3], strlen(argv[3]))) {
		fprintf(stderr, "prepare: %s\n", mysql_stmt_error(stmt));
		return 1;
	}
	int value = atoi(argv[4]);
	MYSQL_BIND bind;
	memset(&bind, 0, sizeof(bind));
	bind.buffer_type = MYSQL_TYPE_LONG;
	bind.buffer = &value;
	int repeat = argc > 5 ? atoi(argv[5]) : 1;
	for (int i = 0; i < repeat; i++) {
		if (mysql_stmt_bind_param(stmt, &bind) || mysql_stmt_execute(stmt)) {
			fprintf(stderr, "execute: %s\n", mysql_stmt_error(stmt));
			return 1;
		}
		mysql_stmt_store_result(stmt);
		mysql_stmt_free_result(stmt);
	}
	printf("ok %lu\n", (unsigned long)mysql_stmt_affected_rows(stmt));
	mysql_stmt_close(stmt);
	mysql_close(db);
	return 0;
}
